"""End-to-end RL: this system (local stack, async and sync) vs TRL's GRPOTrainer, same machine.

One run, one starting point: the tiny model is built and SFT'd with the project's own SFT code
(as `t1 demo` does), then each contender starts from its own copy of that SFT model, with the
same task, prompts (the same ones, in the same order), prompts per step, K samples, max tokens,
temperature/top-p, learning rate (constant), entropy bonus, KL off, and number of steps:

1. ours, asynchronous: the real local stack (Redis, vLLM generator, verifier, DeepSpeed trainer
   as separate processes), ``trainer.max_staleness=1``;
2. ours, synchronous: the same with ``trainer.max_staleness=0``;
3. TRL's GRPOTrainer (trl 1.16.0, installed from the ``bench`` extra on first use) on the CPU
   with its own transformers generation, in its own process; the reward function calls this
   project's verifier scorer in-process (bench/_trl_grpo.py).

Per contender: wall clock per RL step (median, first step excluded: it holds start-up),
samples/s, response tokens/s, generator idle fraction, the training reward over the last steps,
and a held-out reward of the final model (bench/_heldout.py, one sampler for all). For ours, a
per-stage breakdown of the step from what the services already expose: the trainer's step
records, the generator's and verifier's /metrics (sampled during the run) and their JSON log
events (bench/_stages.py).

Extra config overrides for both of our runs (for experiments) can be given in the environment:
``T1_BENCH_SET="trainer.torch_threads=2 verifier.workers=1"``; ``T1_BENCH_STEPS``,
``T1_BENCH_SFT_STEPS`` and ``T1_BENCH_TRL_THREADS`` change the defaults below (quick checks);
``T1_BENCH_KEEP=DIR`` keeps every run's logs and models under DIR.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

STEPS = int(os.environ.get("T1_BENCH_STEPS", "15"))
PROMPTS = 8  # prompts (groups) per step
K = 8  # samples per prompt
MAX_TOKENS = 80
LR = 1e-4
TEMPERATURE = 1.0
TOP_P = 1.0
ENTROPY_COEF = 0.001
SFT_STEPS = int(os.environ.get("T1_BENCH_SFT_STEPS", "200"))
LAST = 3  # "reward after N steps": mean training reward over the last LAST steps
HELDOUT_PROMPTS = 64
HELDOUT_K = 8
TRL_THREADS = int(os.environ.get("T1_BENCH_TRL_THREADS", "1"))
OVERRIDES = [
    "task.name=addition",  # the task these figures were measured on (docs/benchmarks.md)
    f"trainer.groups_per_step={PROMPTS}", f"generator.samples_per_prompt={K}",
    f"generator.max_tokens={MAX_TOKENS}", f"generator.temperature={TEMPERATURE}",
    f"generator.top_p={TOP_P}", f"trainer.lr={LR}", f"trainer.entropy_coef={ENTROPY_COEF}",
    "trainer.kl_mode=none", "trainer.anchor_interval=0", "trainer.keep_rule=all",
    "trainer.drop_zero_variance=false", "trainer.checkpoint_interval=0",
    f"trainer.total_steps={STEPS}", "generator.gpu_memory_utilization=0.15",
] + os.environ.get("T1_BENCH_SET", "").split()
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "CROSS_RANK", "CROSS_SIZE")


def config(extra: list[str]):
    from services.common.config import load_config

    return load_config("tiny", OVERRIDES + extra, environ={})


def sft(root: Path) -> Path:
    from services.common.config import ModelConfig
    from services.trainer.sft import run_sft
    from services.trainer.tiny_model import build_tiny_model

    base = build_tiny_model(ModelConfig(), root / "model" / "base")
    cfg = config([f"trainer.sft_steps={SFT_STEPS}"])  # 1 torch thread: 2 oversubscribe a shared machine
    t0 = time.monotonic()
    out = run_sft(cfg, base, root / "model" / "sft")
    print(f"SFT: {SFT_STEPS} steps x {cfg.trainer.sft_batch} (lr {cfg.trainer.sft_lr}) in "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    return out


def run_ours(max_staleness: int, sft_dir: Path, root: Path) -> dict:
    from _stages import MetricsSampler, stack_breakdown

    from services.common import weights
    from services.common.net import free_port
    from services.stack import Stack

    name = f"staleness{max_staleness}"
    model_dir = root / "model" / name
    shutil.copytree(sft_dir, model_dir)
    cfg = config([f"run_dir={root / name}", f"model.path={model_dir}",
                  f"trainer.max_staleness={max_staleness}", f"generator.port={free_port()}",
                  f"verifier.port={free_port()}", f"trainer.port={free_port()}"])
    t0 = time.monotonic()
    sampler = MetricsSampler(cfg.generator.port, cfg.verifier.port)
    with Stack(cfg) as stack:
        sampler.start()
        try:
            stack.wait_trainer(timeout_s=900, poll_s=0.5)
        finally:
            sampler.stop()
        s = stack.streams()
        records = [json.loads(x) for x in s.r.lrange(s.key("trainer:steps"), 0, -1)]
    wall = time.monotonic() - t0
    stages = stack_breakdown(Path(cfg.run_dir), records, sampler.samples)
    step_s = stages["step_s"]
    tokens = statistics.median(r["tokens"] for r in records[1:])
    final = weights.version_dir(cfg.weights_dir, STEPS)
    out = {"name": f"ours {'async' if max_staleness else 'sync'} (max_staleness={max_staleness})",
           "step_s": step_s, "samples_per_s": PROMPTS * K / step_s, "tokens_per_s": tokens / step_s,
           "gen_idle": stages["gen_idle_fraction"], "wall_s": wall,
           "reward_last": statistics.mean(r["reward_mean"] for r in records[-LAST:]),
           "rewards": [r["reward_mean"] for r in records], "stages": stages,
           "final_model": root / f"final-{name}"}
    shutil.copytree(final, out["final_model"])
    shutil.copytree(Path(cfg.run_dir) / "logs", root / f"logs-{name}")
    return out


def run_trl(sft_dir: Path, root: Path) -> dict:
    cfg = config([])
    tc = cfg.trainer
    model_dir = root / "model" / "trl"
    shutil.copytree(sft_dir, model_dir)
    spec = {"model": str(model_dir), "out_dir": str(root / "trl-out"),
            "final_model": str(root / "final-trl"), "k": K, "steps": STEPS,
            "prompts_per_step": PROMPTS, "task": cfg.task.model_dump(), "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE,
            "top_p": TOP_P, "lr": LR, "grad_clip": tc.grad_clip, "clip_eps_low": tc.clip_eps_low,
            "clip_eps_high": tc.clip_eps_high, "entropy_coef": ENTROPY_COEF, "seed": 0,
            "torch_threads": TRL_THREADS, "verifier": cfg.verifier.model_dump()}
    (root / "trl-spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["TRL_EXPERIMENTAL_SILENCE"] = "1"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "_trl_grpo.py"),
                           str(root / "trl-spec.json"), str(root / "trl.json")],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:])
        raise SystemExit(f"TRL run failed (exit {proc.returncode})")
    wall = time.monotonic() - t0
    r = json.loads((root / "trl.json").read_text())
    later = slice(1, None)  # the first step holds TRL's own start-up (dataloader, first generate)
    step_s = statistics.median(r["step_s"][later])
    gen = sum(r["generate_s"][later]) / sum(r["step_s"][later])
    rew = sum(r["reward_s"][later]) / len(r["reward_s"][later])
    tokens = statistics.median(r["mean_length"][later]) * PROMPTS * K
    rewards = [statistics.mean(x) for x in r["rewards"]]
    return {"name": f"trl-grpo (trl 1.16.0, {r['torch_threads']} torch threads)", "step_s": step_s,
            "samples_per_s": PROMPTS * K / step_s, "tokens_per_s": tokens / step_s,
            "gen_idle": 1.0 - gen, "wall_s": wall, "reward_last": statistics.mean(rewards[-LAST:]),
            "rewards": rewards, "final_model": root / "final-trl",
            "stages": {"generate": statistics.median(r["generate_s"][later]), "reward": rew,
                       "train": step_s - statistics.median(r["generate_s"][later]) - rew}}


def heldout(contenders: dict[str, dict], sft_dir: Path) -> dict[str, dict]:
    import torch
    from _heldout import heldout_reward

    from services.common.config import VerifierConfig
    from services.evaluation import heldout_problems
    from services.verifier.scoring import Scorer

    torch.set_num_threads(1)
    cfg = config([])
    problems = heldout_problems(cfg, HELDOUT_PROMPTS)
    scorer = Scorer(VerifierConfig(**cfg.verifier.model_dump()))
    models = {"SFT start": sft_dir, **{k: c["final_model"] for k, c in contenders.items()}}
    out = {name: heldout_reward(str(path), problems, HELDOUT_K, MAX_TOKENS, TEMPERATURE, TOP_P, scorer)
           for name, path in models.items()}
    scorer.close()
    return out


def main() -> None:
    from _deps import ensure_trl

    ensure_trl()
    t_start = time.monotonic()
    keep = os.environ.get("T1_BENCH_KEEP")  # a directory to keep the runs (logs, models) in
    with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="t1-bench-e2e-")) as tmp:
        root = Path(tmp)
        sft_dir = sft(root)
        runs = {}
        for key, fn in (("async", lambda: run_ours(1, sft_dir, root)),
                        ("sync", lambda: run_ours(0, sft_dir, root)),
                        ("trl", lambda: run_trl(sft_dir, root))):
            runs[key] = fn()
            print(f"{runs[key]['name']}: done in {runs[key]['wall_s']:.0f} s", flush=True)
        held = heldout(runs, sft_dir)
    total = time.monotonic() - t_start

    print(f"\nsetting: {STEPS} RL steps x {PROMPTS} prompts x K={K}, max {MAX_TOKENS} tokens, "
          f"T={TEMPERATURE}, top-p {TOP_P}, lr {LR} (constant), entropy {ENTROPY_COEF}, KL off, "
          f"from the same SFT model ({SFT_STEPS} SFT steps); bench wall clock {total:.0f} s")
    print(f"{'contender':44s} {'step s':>7s} {'samples/s':>9s} {'tok/s':>6s} {'gen idle':>8s} "
          f"{'reward last' + str(LAST):>12s} {'held-out reward/acc':>20s}")
    for key, r in runs.items():
        h = held[key]
        print(f"{r['name']:44s} {r['step_s']:7.2f} {r['samples_per_s']:9.1f} {r['tokens_per_s']:6.0f} "
              f"{r['gen_idle']:8.2f} {r['reward_last']:+12.3f} {h['reward']:+13.3f} / {h['accuracy']:.3f}")
    h = held["SFT start"]
    print(f"{'SFT start (no RL)':44s} {'':7s} {'':9s} {'':6s} {'':8s} {'':12s} "
          f"{h['reward']:+13.3f} / {h['accuracy']:.3f}")
    print("training reward per step:")
    for key, r in runs.items():
        print(f"  {key:5s} " + " ".join(f"{x:+.2f}" for x in r["rewards"]))

    print("\nwhere our step time goes (seconds per step; window = first to last step commit):")
    print(f"{'':6s} {'step':>5s} {'gen busy':>8s} {'reload':>6s} {'drain':>6s} {'verify':>7s} "
          f"{'compute':>7s} {'publish':>7s} {'trainer wait':>12s} {'gen idle':>8s}")
    for key in ("async", "sync"):
        st = runs[key]["stages"]
        print(f"{key:6s} {st['step_s']:5.2f} {st['gen_busy_per_step']:8.2f} "
              f"{st['gen_reload_per_step']:6.3f} {st['gen_drain_per_step']:6.3f} "
              f"{st['verify_item_s_per_step']:7.3f} {st['trainer_compute']:7.2f} "
              f"{st['trainer_publish']:7.3f} {st['trainer_wait']:12.2f} {st['gen_idle_fraction']:8.2f}")
    print("  gen busy: engine had groups in flight (/metrics sampled every 0.1 s); reload: weight "
          "load; drain: finishing in-flight groups before a load; verify: scorer item-seconds; "
          "compute/publish/wait: the trainer's step records")
    st = runs["trl"]["stages"]
    print(f"trl    {runs['trl']['step_s']:5.2f} generate {st['generate']:.2f}, reward (scorer) "
          f"{st['reward']:.3f}, train + rest {st['train']:.2f}")

    a, s, t = runs["async"], runs["sync"], runs["trl"]
    ha, ht = held["async"]["reward"], held["trl"]["reward"]
    print(f"RESULT e2e_steps_vs_trl {t['step_s'] / a['step_s']:.2f} x vs trl-grpo")
    print(f"RESULT e2e_samples_per_s_vs_trl {a['samples_per_s'] / t['samples_per_s']:.2f} x vs trl-grpo")
    print(f"RESULT e2e_tokens_per_s_vs_trl {a['tokens_per_s'] / t['tokens_per_s']:.2f} x vs trl-grpo")
    print(f"RESULT e2e_heldout_reward_vs_trl {ha / ht:.2f} x vs trl-grpo" if ht > 0 else
          "RESULT e2e_heldout_reward_vs_trl nan x vs trl-grpo")
    print(f"RESULT e2e_heldout_reward_diff_vs_trl {ha - ht:+.3f} reward vs trl-grpo")
    print(f"RESULT e2e_async_vs_sync {s['step_s'] / a['step_s']:.2f} x vs sync")
    print(f"RESULT e2e_sync_steps_vs_trl {t['step_s'] / s['step_s']:.2f} x vs trl-grpo")


if __name__ == "__main__":
    main()
