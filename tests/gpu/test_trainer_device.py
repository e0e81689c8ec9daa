"""The trainer on whatever device this machine has: CUDA in bf16 where there is a GPU (this is
what ``scripts/gpu-check.sh`` runs there), the CPU in fp32 everywhere else (CI), the same code.

SFT steps; RL steps with the dynamic anchor (offloaded to the CPU between passes on a GPU) and
the KL folded into the reward; a checkpoint and a resume that reproduces the uninterrupted run;
the chunked log-probs' gradients on the device. No verifier here: the GPU image has none of its
dependencies, so verdicts are written by the test (the answers' correctness is known).
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common import streams, weights
from services.common.ledger import Ledger
from services.common.schemas import Prompt, RolloutGroup, Sample, ScoredGroup, Verdict

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
PRECISION = "bf16" if CUDA else "fp32"
# bf16 rounds each logit to ~3 significant digits: the same step computed twice can differ more
TOL = 2e-2 if CUDA else 1e-6
K = 4

pytestmark = pytest.mark.slow


def config(make_config, s, redis_server, run_dir, *extra):
    return make_config(f"trainer.precision={PRECISION}", "trainer.groups_per_step=2",
                       "trainer.total_steps=10", "trainer.lr=1e-3", "trainer.kl_mode=reward",
                       "trainer.kl_coef=0.01", "trainer.anchor_interval=2", "trainer.tensorboard=false",
                       f"trainer.anchor_offload={str(CUDA).lower()}", "trainer.logprob_chunk_tokens=16",
                       f"redis.prefix={s.prefix}", f"run_dir={run_dir}", *extra,
                       redis_url=redis_server.url)


def group(prompt: Prompt, tok, policy, version: int) -> ScoredGroup:
    """K answers (two right, two wrong) with behaviour log-probs from the trainer's own policy
    module on its device, as a generator serving that version would report them."""
    from services.trainer.packing import pack

    p_ids = tok(prompt.text, add_special_tokens=False)["input_ids"]
    texts = [f"so x is \\boxed{{{int(prompt.gold) + (0 if i < 2 else i)}}}" for i in range(K)]
    r_ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    batch = pack([(p_ids, r) for r in r_ids], 0, tok.eos_token_id).to(next(policy.parameters()).device)
    with torch.no_grad():
        logp, _ = policy(batch.input_ids, batch.position_ids, batch.score_at, batch.targets)
    per_seq = logp.float().cpu().split(batch.lengths)
    samples = [Sample(text=t, token_ids=r, logprobs=lp.tolist(), finish_reason="stop")
               for t, r, lp in zip(texts, r_ids, per_seq)]
    verdicts = [Verdict(correct=i < 2, reward=1.0 if i < 2 else 0.0, extracted=None, status="ok")
                for i in range(K)]
    rollout = RolloutGroup(prompt=prompt, prompt_token_ids=p_ids, samples=samples,
                           policy_version=version, generator_id="test", temperature=1.0, top_p=1.0)
    return ScoredGroup(rollout=rollout, verdicts=verdicts)


def steps(trainer, s, tok, n):
    records = []
    consumer = streams.Consumer(s, streams.PROMPTS, "generator", "test-gen", Prompt)
    while len(records) < n:
        trainer.feeder.top_up(trainer.version)
        entries = consumer.read(2, block_ms=200)
        pipe = s.transaction()
        consumer.ack([e.id for e in entries], pipe)
        pipe.execute()
        for e in entries:
            s.publish(streams.SCORED, group(e.msg, tok, trainer.engine.module, trainer.version))
        for _ in range(20):
            rec = trainer.run_once()
            if rec:
                records.append(rec)
                break
    return records


def test_sft_steps_on_the_device(tmp_path, make_config, tiny_model_dir):
    from services.trainer.sft import run_sft

    pairs = [(f"Q:{a}+{a}\nA:", f"\\boxed{{{2 * a}}}") for a in range(20)]
    cfg = make_config(f"trainer.precision={PRECISION}", "trainer.sft_steps=20", "trainer.sft_batch=8",
                      "trainer.sft_lr=3e-3", "trainer.sft_warmup_steps=5", "trainer.sft_schedule=cosine",
                      "trainer.sft_micro_batch_tokens=48", f"run_dir={tmp_path / 'run'}")
    losses = []
    out = run_sft(cfg, tiny_model_dir, tmp_path / "sft", data=pairs,
                  progress=lambda step, loss: losses.append(loss))
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in tuned.parameters())


def test_rl_steps_with_the_anchor_then_resume_reproduce_the_run(s, make_config, redis_server,
                                                                tiny_model_dir, tmp_path):
    from services.trainer.rl import RLTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    straight = RLTrainer(config(make_config, s, redis_server, tmp_path / "straight"), s, "trainer-dev")
    # where things live: the policy on the device in the compute dtype, the anchor offloaded
    dtype = torch.bfloat16 if CUDA else torch.float32
    assert {p.device.type for p in straight.engine.module.parameters()} == {DEVICE}
    assert {p.dtype for p in straight.engine.module.parameters()} == {dtype}
    assert {p.dtype for p in straight.anchor.model.parameters()} == {dtype}
    assert not any(p.requires_grad for p in straight.anchor.model.parameters())
    reference = steps(straight, s, tok, 3)
    assert {p.device.type for p in straight.anchor.model.parameters()} == {"cpu" if CUDA else DEVICE}
    assert [r["anchor_rotated"] for r in reference] == [False, True, False]
    for r in reference:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
        assert r["ratio_dev"] < (0.05 if CUDA else 1e-4)  # behaviour == policy, up to bf16 noise
    assert abs(reference[1]["seq_kl_mean"]) > 1e-4  # policy v1 drifted from anchor v0
    ann = weights.latest(s)
    assert ann.version == 3
    weights.verify(ann)

    s2 = streams.Streams(streams.connect(redis_server.url), prefix=f"{s.prefix}-resumed")
    torch.manual_seed(0)
    cfg = config(make_config, s2, redis_server, tmp_path / "resumed")
    first = RLTrainer(cfg, s2, "trainer-dev")
    before = steps(first, s2, tok, 2)
    del first  # the process dies after step 2 committed
    resumed = RLTrainer(cfg, s2, "trainer-dev")
    assert resumed.version == 2 and resumed.anchor.version == 2  # rotated at 2, from the checkpoint
    after = steps(resumed, s2, tok, 1)
    losses = [r["loss"] for r in before + after]
    assert losses == pytest.approx([r["loss"] for r in reference], abs=TOL, rel=TOL)
    assert Ledger(s2).counts()["trained"] == 6


def test_chunked_logprob_gradients_on_the_device():
    from services.trainer.objective import token_logprobs_and_entropy
    from services.trainer.policy import chunked_token_logprobs

    torch.manual_seed(0)
    head = torch.nn.Linear(32, 1000, bias=False).to(DEVICE)
    hidden = torch.randn(300, 32, device=DEVICE, requires_grad=True)
    targets = torch.randint(0, 1000, (300,), device=DEVICE)
    ref_lp, ref_ent = token_logprobs_and_entropy(head(hidden), targets, 1.1)
    (ref_lp.sum() + ref_ent.sum()).backward()
    ref = hidden.grad.clone()
    hidden.grad = None
    lp, ent = chunked_token_logprobs(hidden, head, targets, 1.1, chunk_tokens=64)
    (lp.sum() + ent.sum()).backward()
    assert lp.device.type == DEVICE
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden.grad, ref, rtol=1e-5, atol=1e-5)
