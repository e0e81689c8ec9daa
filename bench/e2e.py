"""End-to-end RL step rate on the local stack: asynchronous (max_staleness=1) vs synchronous (0).

Same tiny model, task, prompts per step, K, max tokens, learning rate and number of steps in both
runs; each run is the real stack (Redis, vLLM generator, verifier, DeepSpeed trainer as separate
processes). The step time is the median gap between consecutive step commits, after the first
(which includes service start-up). The comparison against TRL's GRPOTrainer is not part of this
benchmark yet.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

STEPS = 10
OVERRIDES = [
    "trainer.groups_per_step=8", "generator.samples_per_prompt=8", "generator.max_tokens=64",
    "trainer.drop_zero_variance=false", "trainer.checkpoint_interval=0", "trainer.lr=1e-4",
    f"trainer.total_steps={STEPS}", "generator.gpu_memory_utilization=0.15",
]


def run(max_staleness: int, model_dir: Path, root: Path) -> dict:
    from services.common.config import load_config
    from services.common.net import free_port
    from services.stack import Stack

    cfg = load_config("tiny", OVERRIDES + [
        f"run_dir={root / f'staleness{max_staleness}'}", f"model.path={model_dir}",
        f"trainer.max_staleness={max_staleness}", f"generator.port={free_port()}",
        f"verifier.port={free_port()}", f"trainer.port={free_port()}"], environ={})
    with Stack(cfg) as stack:
        stack.wait_trainer(timeout_s=900, poll_s=0.5)
        s = stack.streams()
        records = [json.loads(x) for x in s.r.lrange(s.key("trainer:steps"), 0, -1)]
    gaps = [b["time"] - a["time"] for a, b in zip(records, records[1:])]
    step_s = statistics.median(gaps)
    samples = cfg.trainer.groups_per_step * cfg.generator.samples_per_prompt
    tokens = statistics.median(r["tokens"] for r in records)
    return {"step_s": step_s, "samples_per_s": samples / step_s, "tokens_per_s": tokens / step_s,
            "trainer_compute_s": statistics.median(r["compute_s"] for r in records),
            "reward_last": records[-1]["reward_mean"]}


def main() -> None:
    from services.common.config import ModelConfig
    from services.trainer.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="t1-bench-e2e-") as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model(ModelConfig(), root / "model")
        sync = run(0, model_dir, root)
        async_ = run(1, model_dir, root)
    for name, r in (("sync  (max_staleness=0)", sync), ("async (max_staleness=1)", async_)):
        print(f"{name}: step {r['step_s']:.2f} s (median), {r['samples_per_s']:.1f} samples/s, "
              f"{r['tokens_per_s']:.0f} response tokens/s, trainer compute {r['trainer_compute_s']:.2f} s/step, "
              f"reward at step {STEPS} {r['reward_last']:+.3f}")
    print(f"RESULT e2e_async_vs_sync {sync['step_s'] / async_['step_s']:.2f} x vs sync")


if __name__ == "__main__":
    main()
