"""``t1 demo``: the embedded default end to end, on the same code as production.

Build the tiny model, SFT it on synthesized trial-and-error CoT, then run RL on the local stack
(embedded Redis + generator + verifier + trainer as separate processes), and write a report.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.common import weights
from services.common.config import T1Config
from services.common.ledger import Ledger
from services.evaluation import evaluate_checkpoints, plot_scaling
from services.stack import Stack


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console)


def prepare_model(cfg: T1Config) -> Path:
    """Make sure ``model.path`` exists; the tiny default is built there if it does not."""
    from services.trainer.tiny_model import build_tiny_model

    path = Path(cfg.model.path)
    if not (path / "config.json").exists():
        build_tiny_model(cfg.model, path)
    return path


def rl_progress(stack: Stack, console: Console, timeout_s: float = 3600) -> list[dict]:
    s = stack.streams()
    key = s.key("trainer:steps")
    total = stack.cfg.trainer.total_steps
    with _progress(console) as bar:
        task = bar.add_task("RL steps", total=total, info="starting services (vLLM ~45s)")

        shown = [0]

        def poll() -> None:
            n = s.r.llen(key)
            info = "waiting for the first batch"
            if n:
                rec = json.loads(s.r.lindex(key, -1))
                info = (f"v{rec['step']} reward {rec['reward_mean']:+.3f} "
                        f"acc {rec['accuracy']:.2f} entropy {rec['entropy']:.3f}")
            bar.update(task, completed=n, info=info)
            if not console.is_terminal and n > shown[0]:  # logs and CI get one line per step
                shown[0] = n
                console.print(f"RL step {n}/{total}: {info}")

        stack.wait_trainer(timeout_s, on_poll=poll)
        poll()
    return [json.loads(x) for x in s.r.lrange(key, 0, -1)]


def run_demo(cfg: T1Config, console: Console) -> Path:
    from services.trainer.sft import run_sft

    run_dir = Path(cfg.run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a demo is a fresh run: old ledgers and weights would resume it
    base = prepare_model(cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"path": str(run_dir / "model" / "base")})}))
    sft_dir = run_dir / "model" / "sft"

    console.print(f"[bold]1/3 SFT[/bold] {cfg.trainer.sft_steps} steps on synthesized CoT")
    sft_losses: list[float] = []
    with _progress(console) as bar:
        task = bar.add_task("SFT steps", total=cfg.trainer.sft_steps, info="")

        def on_step(step: int, loss: float) -> None:
            sft_losses.append(loss)
            bar.update(task, completed=step, info=f"loss {loss:.3f}")
            if not console.is_terminal and (step % 50 == 0 or step == cfg.trainer.sft_steps):
                console.print(f"SFT step {step}/{cfg.trainer.sft_steps} loss {loss:.3f}")

        t0 = time.monotonic()
        run_sft(cfg, base, sft_dir, progress=on_step)
        sft_seconds = time.monotonic() - t0

    rl_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(sft_dir)})})
    console.print(f"[bold]2/3 RL[/bold] {cfg.trainer.total_steps} steps on the local stack "
                  f"(K={cfg.generator.samples_per_prompt}, {cfg.trainer.groups_per_step} prompts/step)")
    t0 = time.monotonic()
    with Stack(rl_cfg) as stack:
        steps = rl_progress(stack, console)
        s = stack.streams()
        counts = Ledger(s).counts()
        served = {k.decode(): int(v) for k, v in s.r.hgetall(s.key("generators")).items()}
    rl_seconds = time.monotonic() - t0

    console.print("[bold]3/4 evaluation[/bold] held-out accuracy and inference scaling "
                  "(SFT model vs final RL policy)")
    t0 = time.monotonic()
    final = weights.version_dir(cfg.weights_dir, cfg.trainer.total_steps)
    evals = evaluate_checkpoints(
        cfg, {"SFT": str(sft_dir), f"RL v{cfg.trainer.total_steps}": str(final)}, n=cfg.eval_problems,
        k=cfg.generator.samples_per_prompt,
        progress=lambda label, r: console.print(
            f"  {label}: greedy {r['accuracy'].greedy:.3f}, pass@1 {r['accuracy'].pass1:.3f}, "
            f"maj@{r['accuracy'].k} {r['accuracy'].maj_k:.3f}"))
    plot_scaling({label: r["scaling"] for label, r in evals.items()}, run_dir / "scaling.png")
    eval_seconds = time.monotonic() - t0

    console.print("[bold]4/4 report[/bold]")
    return write_report(run_dir, cfg, steps, counts, served, sft_losses, sft_seconds, rl_seconds,
                        evals, eval_seconds)


def write_report(run_dir: Path, cfg: T1Config, steps: list[dict], counts: dict[str, int],
                 served: dict[str, int], sft_losses: list[float], sft_seconds: float,
                 rl_seconds: float, evals: dict[str, dict], eval_seconds: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    axes[0].plot(range(1, len(sft_losses) + 1), sft_losses)
    axes[0].set(title="SFT loss", xlabel="step")
    x = [r["step"] for r in steps]
    axes[1].plot(x, [r["reward_mean"] for r in steps], marker="o", label="reward")
    axes[1].plot(x, [r["accuracy"] for r in steps], marker="s", label="accuracy (sampled)")
    axes[1].text(0.01, 0.01, "over the groups trained on (zero-variance groups are dropped first)",
                 transform=axes[1].transAxes, fontsize=7)
    axes[1].set(title="RL: reward and accuracy per step", xlabel="step")
    axes[1].legend()
    axes[2].plot(x, [r["entropy"] for r in steps], marker="o")
    axes[2].set(title="RL: policy entropy", xlabel="step")
    axes[3].plot(x, [r.get("kl_anchor", 0.0) for r in steps], marker="o", label="KL to anchor (k3)")
    axes[3].plot(x, [r["response_len"] / 100 for r in steps], marker=".", label="response length / 100")
    axes[3].set(title="RL: KL to the dynamic anchor, length", xlabel="step")
    axes[3].legend()
    fig.tight_layout()
    plot = run_dir / "training.png"
    fig.savefig(plot, dpi=110)
    plt.close(fig)

    lines = [
        "# t1 demo report", "",
        f"- preset: K={cfg.generator.samples_per_prompt} samples/prompt, "
        f"{cfg.trainer.groups_per_step} prompts/step, temperature {cfg.generator.temperature}, "
        f"max_staleness {cfg.trainer.max_staleness}",
        f"- SFT: {cfg.trainer.sft_steps} steps in {sft_seconds:.0f}s, final loss "
        f"{sft_losses[-1]:.3f}" if sft_losses else "- SFT: skipped",
        f"- RL: {len(steps)} steps in {rl_seconds:.0f}s (including service start-up)",
        f"- generators ended serving: {served}",
        f"- accounting: {counts}", "",
        "Reward and accuracy are over the groups trained on in each step (groups whose K samples",
        "all scored the same are dropped before, as `zero_variance`).", "",
        "| step | reward | accuracy | entropy | pg loss | staleness | step s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in steps:
        lines.append(f"| {r['step']} | {r['reward_mean']:+.3f} | {r['accuracy']:.3f} | "
                     f"{r['entropy']:.3f} | {r['pg_loss']:+.4f} | {r['staleness_mean']:.2f} | "
                     f"{r['compute_s']:.2f} |")
    lines += ["", f"![training]({plot.name})", "",
              f"## Held-out evaluation ({eval_seconds:.0f}s)", "",
              f"{cfg.eval_problems} problems from a separate seed ({cfg.task.eval_seed}), never trained on; "
              f"k={cfg.generator.samples_per_prompt} samples at temperature {cfg.generator.temperature}.", "",
              "| model | greedy | pass@1 (sampled) | pass@k | maj@k |", "|---|---:|---:|---:|---:|"]
    for label, r in evals.items():
        a = r["accuracy"]
        lines.append(f"| {label} | {a.greedy:.3f} | {a.pass1:.3f} | {a.pass_k:.3f} | {a.maj_k:.3f} |")
    budgets = sorted(next(iter(evals.values()))["scaling"])
    lines += ["", "Inference scaling: greedy accuracy when the reasoning is cut at a token budget and "
              "the answer is forced.", "",
              "| model | " + " | ".join(str(b) for b in budgets) + " |",
              "|---|" + "---:|" * len(budgets)]
    for label, r in evals.items():
        lines.append(f"| {label} | " + " | ".join(f"{r['scaling'][b]:.3f}" for b in budgets) + " |")
    lines += ["", "![scaling](scaling.png)", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
