"""``t1 ablate``: the same RL budget from the same SFT model, with one T1 ingredient changed.

Each variant is a full RL run on the local stack (the same code as the demo), from the same
starting checkpoint, for the same number of steps and prompts per step. The final policies are
then evaluated together on the held-out problems by one engine, and the effect of each change
is tabulated against the preset (``ablate.md``, ``ablate.json``, ``ablate.png``).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from rich.console import Console

from services.common import weights
from services.common.config import T1Config, with_overrides
from services.evaluation import evaluate_checkpoints, paired_gain
from services.stack import Stack

# T1's ingredients, one at a time (paper: entropy bonus, dynamic anchor, oversampling).
VARIANTS: dict[str, list[str]] = {
    "T1 (preset)": [],
    "no entropy bonus": ["trainer.entropy_coef=0"],
    "fixed anchor": ["trainer.anchor_interval=0"],
    "K=4": ["generator.samples_per_prompt=4"],
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_variant(cfg: T1Config, console: Console) -> tuple[list[dict], float]:
    from services.demo import rl_progress

    t0 = time.monotonic()
    with Stack(cfg) as stack:
        steps = rl_progress(stack, console).steps
    return steps, time.monotonic() - t0


def run_ablation(cfg: T1Config, start: Path, out: Path, console: Console,
                 variants: dict[str, list[str]] | None = None) -> Path:
    variants = variants or VARIANTS
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict] = {}
    for i, (name, sets) in enumerate(variants.items(), 1):
        run_dir = out / slug(name)
        vcfg = with_overrides(cfg, [*sets, f"run_dir={run_dir}", f"model.path={start}"])
        console.print(f"[bold]{i}/{len(variants)} {name}[/bold] {' '.join(sets) or '(preset)'}: "
                      f"{vcfg.trainer.total_steps} RL steps")
        steps, seconds = run_variant(vcfg, console)
        runs[name] = {"sets": sets, "steps": steps, "seconds": seconds,
                      "final": str(weights.version_dir(vcfg.weights_dir, vcfg.trainer.total_steps))}

    console.print("[bold]evaluation[/bold] every final policy on the held-out problems")
    models = {"SFT start": str(start), **{name: r["final"] for name, r in runs.items()}}
    evals = evaluate_checkpoints(cfg, models, n=cfg.eval_problems, k=cfg.generator.samples_per_prompt)
    return write_ablation(out, cfg, runs, evals)


def _versus(a, base, metric: str) -> str:
    """The difference to the preset, with its paired standard error where it is known."""
    gain, se = paired_gain(a, base, metric)
    return f"{gain / 100:+.3f}" + (f" ± {se / 100:.3f}" if se is not None else "")


def write_ablation(out: Path, cfg: T1Config, runs: dict[str, dict], evals: dict[str, dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, r in runs.items():
        ax.plot([s["step"] for s in r["steps"]], [s["reward_mean"] for s in r["steps"]],
                marker=".", label=name)
    ax.set(title="RL training reward per step", xlabel="step", ylabel="mean reward (groups trained on)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ablate.png", dpi=110)
    plt.close(fig)

    base = evals[next(iter(runs))]["accuracy"]
    k = cfg.generator.samples_per_prompt
    lines = ["# t1 ablate", "",
             f"Every variant: {cfg.trainer.total_steps} RL steps x {cfg.trainer.groups_per_step} prompts "
             f"from the same SFT model; held-out: {cfg.eval_problems} problems (seed {cfg.task.eval_seed}), "
             f"maj@{k} over {k} samples at temperature {cfg.eval_sampling_temperature}.", "",
             "| variant | change | greedy | pass@1 | maj@k | greedy vs preset (± SE) | pass@1 vs preset (± SE) | "
             "last-3 train reward | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, e in evals.items():
        a = e["accuracy"]
        r = runs.get(label)
        tail = [s["reward_mean"] for s in r["steps"][-3:]] if r else []
        lines.append(
            f"| {label} | {' '.join(r['sets']) if r else 'no RL'} | {a.greedy:.3f} | {a.pass1:.3f} | "
            f"{a.maj_k:.3f} | {_versus(a, base, 'greedy')} | {_versus(a, base, 'pass1')} | "
            + (f"{sum(tail) / len(tail):+.3f} | {r['seconds']:.0f} |" if tail else "| |"))
    lines += ["", "![reward per step](ablate.png)", ""]
    report = out / "ablate.md"
    report.write_text("\n".join(lines))
    (out / "ablate.json").write_text(json.dumps(
        {label: {"accuracy": vars(e["accuracy"]), "scaling": e["scaling"],
                 **({k2: v for k2, v in runs[label].items() if k2 != "steps"} if label in runs else {})}
         for label, e in evals.items()}, indent=2))
    return report
