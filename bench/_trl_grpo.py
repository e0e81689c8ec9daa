"""The peer of `t1 bench e2e`: TRL's GRPOTrainer on the CPU with its own (transformers) generation.

Run as its own process by bench/e2e.py: ``python bench/_trl_grpo.py SPEC.json OUT.json``. The
reward function calls this project's verifier scorer in-process (``Scorer``: the reward rule the
stack's verifier applies, with the same truncation flag: a completion that did not end in EOS is
``finish_reason="length"``). Timing: each optimizer step's wall clock from a callback, the
``generate`` call and the reward call timed by wrapping the trainer's own methods.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["torch_threads"])
    import logging

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from services.common.config import TaskConfig, VerifierConfig
    from services.common.verify_api import VerifyOptions
    from services.data.tasks import make_task
    from services.verifier.scoring import Scorer

    logging.getLogger("transformers").setLevel(logging.ERROR)
    K, steps, prompts_per_step = spec["k"], spec["steps"], spec["prompts_per_step"]
    task = make_task(TaskConfig(**spec["task"]))  # the stack's task, whatever its family
    # The same prompts, in the same order, as the stack's feeder admits them (cursor 0, 1, ...).
    problems = [task.problem(i) for i in range(steps * prompts_per_step)]
    dataset = Dataset.from_list([{"prompt": p.prompt, "gold": str(p.answer)} for p in problems])

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    eos = tokenizer.eos_token_id
    scorer = Scorer(VerifierConfig(**spec.get("verifier", {})))
    raw_rewards: list[list[float]] = []  # per step, the verifier's rewards (before the RLOO scale)
    timing = {"generate": [], "reward": []}
    rloo_scale = K / (K - 1)

    def verifier_reward(prompts, completions, completion_ids, gold, **_):
        items = [(text, g, "math", VerifyOptions(
            finish_reason="stop" if ids and ids[-1] == eos else "length", strict=True))
            for text, ids, g in zip(completions, completion_ids, gold)]
        rewards = [v.reward for v in scorer.score_batch(items)]
        raw_rewards.append(rewards)
        # TRL's advantage with scale_rewards="none" is r_i - mean_j r_j; scaling r by K/(K-1) makes
        # it r_i - mean_{j != i} r_j exactly: the RLOO advantage the stack's trainer uses.
        return [r * rloo_scale for r in rewards]

    args = GRPOConfig(
        output_dir=spec["out_dir"], max_steps=steps, per_device_train_batch_size=K * prompts_per_step,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, num_generations=K,
        max_completion_length=spec["max_tokens"], temperature=spec["temperature"],
        top_p=spec["top_p"], top_k=0, learning_rate=spec["lr"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=spec["grad_clip"], beta=0.0, epsilon=spec["clip_eps_low"],
        epsilon_high=spec["clip_eps_high"], loss_type="dapo", scale_rewards="none",
        entropy_coef=spec["entropy_coef"], shuffle_dataset=False, seed=spec["seed"],
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, save_strategy="no",
        report_to=[], logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        log_completions=False)

    class Timed(GRPOTrainer):
        def _generate_single_turn(self, *a, **kw):
            t0 = time.perf_counter()
            out = super()._generate_single_turn(*a, **kw)
            timing["generate"].append(time.perf_counter() - t0)
            return out

        def _calculate_rewards(self, *a, **kw):
            t0 = time.perf_counter()
            out = super()._calculate_rewards(*a, **kw)
            timing["reward"].append(time.perf_counter() - t0)
            return out

    step_ends: list[float] = []
    logs_seen: list[dict] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                logs_seen.append({**logs, "step": state.global_step})

    trainer = Timed(model=model, reward_funcs=[verifier_reward], args=args, train_dataset=dataset,
                    processing_class=tokenizer, callbacks=[Clock()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    trainer.model.save_pretrained(spec["final_model"], safe_serialization=True)
    tokenizer.save_pretrained(spec["final_model"])
    scorer.close()
    step_s = [b - a for a, b in zip(step_ends, step_ends[1:])]
    lengths = [x["completions/mean_length"] for x in logs_seen if "completions/mean_length" in x]
    Path(out_path).write_text(json.dumps({
        "step_s": step_s, "generate_s": timing["generate"], "reward_s": timing["reward"],
        "rewards": raw_rewards, "mean_length": lengths, "wall_s": wall,
        "entropy": [x["entropy"] for x in logs_seen if "entropy" in x],
        "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
