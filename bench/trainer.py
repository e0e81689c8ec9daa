"""Trainer memory and speed: one RL step at the Qwen2.5-0.5B shape, ours vs full logits.

The step is the trainer's own (``rl_loss.StepLoss`` on the DeepSpeed engine, with the anchor
pass and KL folded into the reward, gradient checkpointing on) on a batch of 2 groups x K=4
samples of PROMPT + RESPONSE tokens (random ids; random-init weights, tied embeddings, vocab
151936). Each variant runs in a process of its own, so its peak resident memory is its own:

- ours: response positions only through the LM head, log-probs and entropy in checkpointed
  chunks of ``logprob_chunk_tokens``;
- full-logits: the same engine, but the policy's forward is the plain HF forward (logits at
  every position, [8, 576, 151936] in fp32) followed by a log-softmax and the entropy over all of
  them -- the few lines kept below, which is how the trainer computed it before.

The analytic floor: fp32 parameters + gradients + AdamW's two moments (4 x 4 bytes per
parameter), the anchor's parameters (4 bytes each), and the checkpointed activations (one
hidden state per layer and token, 4 bytes). Peak memory is compared net of the process's memory
before the model is built (Python, torch, DeepSpeed), whole and as the excess over the floor
(the part the logits path decides). Env: T1_BENCH_RESPONSE (default 512).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT, RESPONSE = 64, int(os.environ.get("T1_BENCH_RESPONSE", "512"))
GROUPS, K = 2, 4
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                  max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=1000000.0)


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def groups():
    import random

    from services.common.schemas import Prompt, RolloutGroup, Sample, ScoredGroup, Verdict

    rng = random.Random(0)
    out = []
    for g in range(GROUPS):
        samples = [Sample(text="", token_ids=[rng.randrange(3, 150000) for _ in range(RESPONSE)],
                          logprobs=[-11.9] * RESPONSE, finish_reason="length") for _ in range(K)]
        verdicts = [Verdict(correct=i % 2 == 0, reward=float(i % 2 == 0), extracted=None, status="ok")
                    for i in range(K)]
        rollout = RolloutGroup(prompt=Prompt(prompt_id=f"p{g}", index=g, text="", gold="0"),
                               prompt_token_ids=[rng.randrange(3, 150000) for _ in range(PROMPT)],
                               samples=samples, policy_version=0, generator_id="bench",
                               temperature=1.0, top_p=1.0)
        out.append(ScoredGroup(rollout=rollout, verdicts=verdicts))
    return out


def variant(name: str) -> dict:
    """One step of ``name`` in this process; returns its figures."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from services.common.config import TrainerConfig
    from services.trainer.anchor import Anchor
    from services.trainer.ds_engine import build_engine, init_distributed
    from services.trainer.objective import token_logprobs_and_entropy
    from services.trainer.policy import Policy
    from services.trainer.rl_loss import StepLoss

    class FullLogits(Policy):
        """The pre-chunking forward: logits everywhere, then log-softmax and entropy."""

        def forward(self, input_ids, position_ids, score_at, targets, temperature=1.0, top_p=1.0,
                    with_entropy=True):
            logits = self.lm(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
            return token_logprobs_and_entropy(logits.flatten(0, 1)[score_at], targets)

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    init_distributed()
    base = rss_gib()
    tc = TrainerConfig(gradient_checkpointing=True, kl_mode="reward", entropy_coef=1e-3,
                       precision="fp32", lr=1e-6)
    torch.manual_seed(0)
    cfg = Qwen2Config(**QWEN25_05B)
    model = Qwen2ForCausalLM(cfg)
    anchor_model = Qwen2ForCausalLM(cfg)
    anchor_model.load_state_dict(model.state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    cls = Policy if name == "ours" else FullLogits
    engine = build_engine(cls(model, tc.logprob_chunk_tokens), tc, tc.lr)
    step = StepLoss(engine, Anchor(anchor_model, 0, device=engine.device), tc, pad_id=0)
    batch = groups()
    t0 = time.monotonic()
    stats = step.run(batch)
    engine.step()
    seconds = time.monotonic() - t0
    return {"name": name, "seconds": seconds, "tokens": stats["tokens"], "loss": stats["loss"],
            "peak_gib": rss_gib(), "base_gib": base, "params": n_params}


def floor_gib(n_params: int) -> tuple[float, str]:
    n_tokens = GROUPS * K * (PROMPT + RESPONSE)
    h, layers = QWEN25_05B["hidden_size"], QWEN25_05B["num_hidden_layers"]
    parts = {"params": 4 * n_params, "grads": 4 * n_params, "adam m+v": 8 * n_params,
             "anchor params": 4 * n_params, "checkpointed activations": 4 * layers * n_tokens * h}
    total = sum(parts.values()) / 2**30
    text = " + ".join(f"{k} {v / 2**30:.2f}" for k, v in parts.items()) + f" = {total:.2f} GiB"
    return total, text


def plan_gib() -> float:
    """`t1 plan`'s estimate for this same step (services/plan.py), held against the measured peak."""
    from services.common.config import load_config
    from services.plan import ModelShape, trainer_estimate

    q = QWEN25_05B
    shape = ModelShape("Qwen2.5-0.5B shape", q["hidden_size"], q["num_hidden_layers"], q["num_attention_heads"],
                       q["num_key_value_heads"], q["intermediate_size"], q["vocab_size"],
                       q["tie_word_embeddings"], q["max_position_embeddings"])
    cfg = load_config(None, [f"placement.prompt_tokens={PROMPT}", f"generator.max_tokens={RESPONSE}",
                             f"generator.samples_per_prompt={K}", f"trainer.groups_per_step={GROUPS}",
                             "trainer.gradient_checkpointing=true", "trainer.precision=fp32"])
    return trainer_estimate(cfg, shape, on_gpus=False).total


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        print(json.dumps(variant(sys.argv[2])))
        return
    results = {}
    for name in ("ours", "full-logits"):
        print(f"trainer bench: {name} ({GROUPS}x{K} samples, {PROMPT}+{RESPONSE} tokens) ...", flush=True)
        out = subprocess.run([sys.executable, __file__, "--variant", name], capture_output=True,
                             text=True, check=False)
        if out.returncode != 0:
            print(out.stderr[-3000:])
            raise SystemExit(f"trainer bench: {name} failed (exit {out.returncode})")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"  {r['seconds']:.1f} s, {r['tokens'] / r['seconds']:.1f} response tokens/s, "
              f"peak RSS {r['peak_gib']:.2f} GiB ({r['base_gib']:.2f} before the model), loss {r['loss']:.5f}")
    ours, full = results["ours"], results["full-logits"]
    floor, arithmetic = floor_gib(ours["params"])
    net = ours["peak_gib"] - ours["base_gib"]
    print(f"analytic floor ({ours['params'] / 1e6:.0f}M parameters): {arithmetic}")
    print(f"RESULT trainer_peak_vs_floor {net / floor:.2f} x vs analytic-floor")
    estimate = plan_gib()
    print(f"t1 plan's estimate of this step: {estimate:.2f} GiB")
    print(f"RESULT trainer_plan_estimate_vs_peak {estimate / net:.2f} x vs measured-peak")
    full_net = full["peak_gib"] - full["base_gib"]
    print(f"RESULT trainer_peak_vs_full_logits {net / full_net:.2f} x vs full-logits")
    # the part of the peak that the logits path decides (the floor is the same for both)
    print(f"RESULT trainer_over_floor_vs_full_logits {(net - floor) / max(full_net - floor, 1e-9):.2f} x vs full-logits")
    print(f"RESULT trainer_tokens_per_s_vs_full_logits {full['seconds'] / ours['seconds']:.2f} x vs full-logits")


if __name__ == "__main__":
    main()
