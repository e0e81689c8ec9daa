"""``t1 demo``: the embedded default end to end, on the same code as production.

Build the tiny model, SFT it on synthesized trial-and-error CoT, then run RL on the local stack
(embedded Redis + generator + verifier + trainer as separate processes), and write a report.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.common import weights
from services.common.config import T1Config
from services.common.ledger import Ledger
from services.evaluation import evaluate_checkpoints, paired_gain, plot_scaling
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


class RLRun(NamedTuple):
    steps: list[dict]
    start_up_s: float  # until a generator served (its vLLM engine up; the trainer is up sooner)
    training_s: float  # from then to the trainer's last step (shut-down not included)


def rl_progress(stack: Stack, console: Console, timeout_s: float = 3600) -> RLRun:
    s = stack.streams()
    key = s.key("trainer:steps")
    total = stack.cfg.trainer.total_steps
    t0 = time.monotonic()
    serving = done = None
    with _progress(console) as bar:
        task = bar.add_task("RL steps", total=total, info="starting services (vLLM ~45s)")

        shown = [0]

        def poll() -> None:
            nonlocal serving, done
            now = time.monotonic()
            if serving is None and s.r.hlen(s.key("generators")):
                serving = now
            n = s.r.llen(key)
            if done is None and n >= total:
                done = now
            if serving is None:
                return
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
    end = done or time.monotonic()
    start = serving or end
    return RLRun([json.loads(x) for x in s.r.lrange(key, 0, -1)], start - t0, end - start)


def sft_stage(cfg: T1Config, src: Path, dst: Path, console: Console, label: str,
              steps: int | None = None, plateau: bool = True, lr: float | None = None) -> dict:
    """SFT with a progress bar; with ``trainer.sft_plateau_every`` it stops at the plateau of
    greedy accuracy on validation problems (after lowering the rate at the earlier ones).
    Returns losses, seconds, steps, that history, the steps where the rate was lowered and the
    final rate."""
    from transformers import AutoTokenizer

    from services.evaluation import greedy_accuracy_hf, validation_problems
    from services.trainer.sft import Plateau, run_sft
    from services.verifier.scoring import Scorer

    tc = cfg.trainer
    steps = tc.sft_steps if steps is None else steps
    losses: list[float] = []
    scorer = watch = None
    if plateau and tc.sft_plateau_every:
        scorer = Scorer(cfg.verifier)
        tok = AutoTokenizer.from_pretrained(src)
        problems = validation_problems(cfg, tc.sft_plateau_problems, tok)
        watch = Plateau(lambda m: greedy_accuracy_hf(m, tok, problems, cfg.generator.max_tokens, scorer),
                        tc.sft_plateau_every, tc.sft_plateau_patience, tc.sft_plateau_min_delta,
                        tc.sft_plateau_lr_decays, tc.sft_plateau_lr_factor, tc.sft_plateau_min_steps)
    try:
        with _progress(console) as bar:
            task = bar.add_task(label, total=steps, info="")

            def on_step(step: int, loss: float) -> None:
                losses.append(loss)
                # the latest validation, named by the step it was taken at (every sft_plateau_every)
                val = (f", val acc {watch.history[-1][1]:.3f} at step {watch.history[-1][0]}"
                       if watch and watch.history else "")
                bar.update(task, completed=step, info=f"loss {loss:.3f}{val}")
                if not console.is_terminal and (step % 50 == 0 or step == steps):
                    console.print(f"{label} {step}/{steps} loss {loss:.3f}{val}")

            t0 = time.monotonic()
            run_sft(cfg, src, dst, progress=on_step, plateau=watch, steps=steps, lr=lr)
            seconds = time.monotonic() - t0
            lowered = watch.restarts if watch else []
    finally:
        if scorer is not None:
            scorer.close()
    return {"losses": losses, "seconds": seconds, "steps": len(losses),
            "validation_s": watch.seconds if watch else 0.0,
            "plateau": watch.history if watch else [],
            "lr_lowered_at": lowered,
            "lr": (tc.sft_lr if lr is None else lr) * tc.sft_plateau_lr_factor ** len(lowered),
            # the watch stopped it, as opposed to running out of steps
            "at_plateau": bool(watch and watch.history) and len(losses) < steps}


def run_demo(cfg: T1Config, console: Console) -> Path:
    run_dir = Path(cfg.run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a demo is a fresh run: old ledgers and weights would resume it
    base = prepare_model(cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"path": str(run_dir / "model" / "base")})}))
    sft_dir = run_dir / "model" / "sft"
    stages = 5 if cfg.equal_compute_sft else 4

    tc = cfg.trainer
    until = (f"until greedy accuracy on {tc.sft_plateau_problems} validation problems stops rising "
             f"(checked every {tc.sft_plateau_every} steps; at most {tc.sft_steps})"
             if tc.sft_plateau_every else f"{tc.sft_steps} steps")
    console.print(f"[bold]1/{stages} SFT[/bold] on synthesized trial-and-error CoT, {until}")
    sft = sft_stage(cfg, base, sft_dir, console, "SFT steps")

    rl_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": str(sft_dir)})})
    console.print(f"[bold]2/{stages} RL[/bold] {tc.total_steps} steps on the local stack "
                  f"(K={cfg.generator.samples_per_prompt}, {tc.groups_per_step} prompts/step)")
    t0 = time.monotonic()
    with Stack(rl_cfg) as stack:
        rl = rl_progress(stack, console)
        s = stack.streams()
        counts = Ledger(s).counts()
        served = {k.decode(): int(v) for k, v in s.r.hgetall(s.key("generators")).items()}
    rl_seconds = time.monotonic() - t0

    models = {"SFT (plateau)" if sft["at_plateau"] else f"SFT ({sft['steps']} steps)": str(sft_dir)}
    more = None
    if cfg.equal_compute_sft:
        # The wall-clock RL trained for (from its generator's first rollouts to its last step;
        # the services' start-up and shut-down are not training), spent on more SFT epochs over
        # the same fixed dataset instead, at SFT's own training rate (its validation excluded).
        rate = (sft["seconds"] - sft["validation_s"]) / max(sft["steps"], 1)
        extra = max(1, round(rl.training_s / max(rate, 1e-6)))
        console.print(f"[bold]3/{stages} SFT, equal compute[/bold] {extra} more SFT steps from the "
                      f"SFT model ({rl.training_s:.0f}s at {rate:.3f}s a step, as long as RL trained)")
        more = sft_stage(cfg, sft_dir, run_dir / "model" / "sft-more", console, "more SFT steps",
                         steps=extra, plateau=False, lr=sft["lr"])  # at the rate SFT ended with
        models["SFT + equal compute"] = str(run_dir / "model" / "sft-more")
    models[f"RL v{tc.total_steps}"] = str(weights.version_dir(cfg.weights_dir, tc.total_steps))

    console.print(f"[bold]{stages - 1}/{stages} evaluation[/bold] held-out accuracy and inference "
                  "scaling")
    t0 = time.monotonic()
    evals = evaluate_checkpoints(
        cfg, models, n=cfg.eval_problems, k=cfg.generator.samples_per_prompt,
        progress=lambda label, r: console.print(
            f"  {label}: greedy {r['accuracy'].greedy:.3f}, pass@1 {r['accuracy'].pass1:.3f}, "
            f"maj@{r['accuracy'].k} {r['accuracy'].maj_k:.3f}"))
    plot_scaling({label: r["scaling"] for label, r in evals.items()}, run_dir / "scaling.png")
    eval_seconds = time.monotonic() - t0

    console.print(f"[bold]{stages}/{stages} report[/bold]")
    return write_report(run_dir, cfg, rl, counts, served, sft, rl_seconds, more, evals, eval_seconds)


def write_report(run_dir: Path, cfg: T1Config, rl: RLRun, counts: dict[str, int],
                 served: dict[str, int], sft: dict, rl_seconds: float, more: dict | None,
                 evals: dict[str, dict], eval_seconds: float) -> Path:
    steps = rl.steps
    sft_losses = sft["losses"]
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

    tc = cfg.trainer
    lines = [
        "# t1 demo report", "",
        f"- command: `{' '.join(['t1', *sys.argv[1:]]) if sys.argv[0].endswith('t1') else 't1 demo'}`",
        f"- task: {cfg.task.name}; seeds: task {cfg.task.seed} (SFT data and RL prompts), held-out "
        f"{cfg.task.eval_seed}, generator {cfg.generator.seed}",
        f"- preset: K={cfg.generator.samples_per_prompt} samples/prompt, "
        f"{tc.groups_per_step} prompts/step, temperature {cfg.generator.temperature}, "
        f"max_staleness {tc.max_staleness}, entropy bonus {tc.entropy_coef}, KL to the anchor "
        f"{tc.kl_mode} x {tc.kl_coef}, anchor rotated every {tc.anchor_interval} versions",
        f"- SFT: {sft['steps']} steps on {tc.sft_examples} fixed synthesized traces "
        f"({cfg.task.wrong_first_share:.0%} correct a failed first attempt) in {sft['seconds']:.0f}s "
        f"({sft['validation_s']:.0f}s of it validation), final loss {sft_losses[-1]:.3f}"
        + (" (stopped at its plateau)" if sft["at_plateau"] else "")
        if sft_losses else "- SFT: skipped",
        f"- RL: {len(steps)} steps in {rl_seconds:.0f}s: service start-up {rl.start_up_s:.0f}s, "
        f"training {rl.training_s:.0f}s (first rollouts to last step), shut-down "
        f"{rl_seconds - rl.start_up_s - rl.training_s:.0f}s",
        f"- generators ended serving: {served}",
        f"- accounting: {counts}", "",
        *([f"SFT plateau: greedy accuracy on {tc.sft_plateau_problems} validation problems by step: "
           + ", ".join(f"{step}: {acc:.3f}" for step, acc in sft["plateau"])
           + (f"; learning rate x {tc.sft_plateau_lr_factor} at the plateau of step(s) "
              + ", ".join(map(str, sft["lr_lowered_at"])) + f", ending at {sft['lr']:.2g}"
              if sft.get("lr_lowered_at") else ""), ""] if sft["plateau"] else []),
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
              f"k={cfg.generator.samples_per_prompt} samples at temperature {cfg.eval_sampling_temperature}.", "",
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
    lines += findings(cfg, sft, more, evals)
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


def findings(cfg: T1Config, sft: dict, more: dict | None, evals: dict[str, dict]) -> list[str]:
    """What the numbers above say, stated from them (not assumed): RL's gain over the SFT model
    and over the same compute spent on more SFT, and whether accuracy rises with the budget."""
    labels = list(evals)
    base, rl = evals[labels[0]]["accuracy"], evals[labels[-1]]["accuracy"]
    lines = ["## What this run shows", ""]
    if sft["plateau"] and not sft["at_plateau"]:
        lines.append(f"- SFT used its whole budget of {cfg.trainer.sft_steps} steps before the plateau "
                     "watch stopped it: the SFT model may not be at its plateau (see the equal-compute "
                     "arm for what more SFT gives)")
    for name, attr in (("greedy", "greedy"), ("sampled pass@1", "pass1")):
        gain, se = paired_gain(rl, base, attr)
        spread = f" ± {se:.1f} (standard error over the problems, paired)" if se is not None else ""
        lines.append(f"- RL vs SFT, {name}: {gain:+.1f} points{spread} "
                     f"({'meets' if gain >= 10 else 'below'} the +10-point goal)")
    if more is not None:
        extra = evals["SFT + equal compute"]["accuracy"]
        lines.append(f"- the time RL trained, spent on {more['steps']} more SFT steps instead: greedy "
                     f"{100 * (extra.greedy - base.greedy):+.1f} points, pass@1 "
                     f"{100 * (extra.pass1 - base.pass1):+.1f} points over the SFT model")
    for label in (labels[0], labels[-1]):
        curve = evals[label]["scaling"]
        budgets = sorted(curve)
        rises = curve[budgets[-1]] > curve[budgets[0]]
        lines.append(f"- {label}: accuracy at budget {budgets[0]} -> {budgets[-1]} tokens: "
                     f"{curve[budgets[0]]:.3f} -> {curve[budgets[-1]]:.3f} "
                     f"({'rises' if rises else 'does not rise'} with the reasoning budget)")
    return lines + [""]
