"""RL step time of the local stack with the tiny preset vs the previous pipeline settings.

Both contenders start from the same SFT model and run the same number of RL steps of the
`tiny` preset (`configs/tiny.yaml`: linear equations, 16 prompts x K=8 a step) on the real local
stack (Redis, vLLM generator, verifier, DeepSpeed trainer as processes):

1. preset: as configured (generator and trainer pinned to a core each, the trainer admitting
   scored groups while a step computes, vLLM decoding every in-flight sequence at once,
   `max_staleness` 2);
2. previous-preset: the settings before those changes (unpinned, admission only between steps,
   vLLM's CPU default of 128 sequences a step, `max_staleness` 1); both run the current
   generator code.

Per contender: the median gap between consecutive step commits (the first step excluded: it
holds service start-up), the trainer's median compute per step, and the prompt accounting.

The start model: ``T1_BENCH_MODEL`` (an HF directory), else ``runs/demo/model/sft`` when a demo
has run, else the tiny model built and SFT'd here for ``T1_BENCH_SFT_STEPS`` (300) steps.
``T1_BENCH_STEPS`` (12) sets the RL steps per contender.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

STEPS = int(os.environ.get("T1_BENCH_STEPS", "12"))
SFT_STEPS = int(os.environ.get("T1_BENCH_SFT_STEPS", "300"))
CONTENDERS = {
    "preset": [],
    "previous-preset": ['generator.cpus=""', 'trainer.cpus=""', "trainer.admit_during_compute=false",
                        "generator.max_num_seqs=128", "trainer.max_staleness=1"],
}


def start_model(root: Path) -> Path:
    from services.common.config import load_config
    from services.demo import prepare_model
    from services.trainer.sft import run_sft

    if os.environ.get("T1_BENCH_MODEL"):
        return Path(os.environ["T1_BENCH_MODEL"])
    if (Path("runs/demo/model/sft") / "config.json").exists():
        return Path("runs/demo/model/sft")
    cfg = load_config("tiny", [f"run_dir={root}", f"model.path={root}/base",
                               f"trainer.sft_steps={SFT_STEPS}", "trainer.sft_plateau_every=0"])
    return run_sft(cfg, prepare_model(cfg), root / "sft")


def run(name: str, sets: list[str], model: Path, root: Path) -> dict:
    from rich.console import Console

    from services.common.config import load_config
    from services.common.ledger import Ledger
    from services.demo import rl_progress
    from services.stack import Stack

    cfg = load_config("tiny", [f"run_dir={root / name}", f"model.path={model}",
                               f"trainer.total_steps={STEPS}", *sets])
    t0 = time.monotonic()
    with Stack(cfg) as stack:
        steps = rl_progress(stack, Console(), 3600).steps
        counts = Ledger(stack.streams()).counts()
    times = [r["time"] for r in steps]
    return {"wall_s": time.monotonic() - t0,
            "step_s": statistics.median(b - a for a, b in zip(times, times[1:])),
            "compute_s": statistics.median(r["compute_s"] for r in steps[1:]),
            "counts": counts}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="t1-bench-rl-") as tmp:
        root = Path(tmp)
        model = start_model(root)
        print(f"setting: tiny preset, {STEPS} RL steps per contender from {model}", flush=True)
        results = {name: run(name, sets, model, root) for name, sets in CONTENDERS.items()}
    print(f"{'contender':18} {'step s':>7} {'compute s':>9} {'wall s':>7}  accounting")
    for name, r in results.items():
        print(f"{name:18} {r['step_s']:7.2f} {r['compute_s']:9.2f} {r['wall_s']:7.0f}  {json.dumps(r['counts'])}")
    prev, now = results["previous-preset"], results["preset"]
    print(f"RESULT rl_steps_per_s_vs_previous_preset {prev['step_s'] / now['step_s']:.2f} x vs previous-preset")
    print(f"RESULT rl_trainer_compute_vs_previous_preset {now['compute_s'] / prev['compute_s']:.2f} x vs previous-preset")


if __name__ == "__main__":
    main()
