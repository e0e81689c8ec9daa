"""``t1``: one command line for every service, the local stack, the demo and benchmarks."""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from services.common.config import REPO_ROOT, T1Config, load_config

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="T1 RL for LLM reasoning as rollout/reward services over Redis.")
console = Console(stderr=True)

ConfigOpt = Annotated[str, typer.Option("--config", "-c",
                                        help="preset in configs/ (tiny, quick, ...) or a YAML file")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override: section.key=value")]
HostOpt = Annotated[Optional[str], typer.Option(help="bind address (default from config)")]
PortOpt = Annotated[Optional[int], typer.Option(help="HTTP port (default from config)")]
NameOpt = Annotated[Optional[str], typer.Option(help="consumer name (default: role-hostname)")]


SECRET_KEYS = ("verifier.auth_token",)


def _load(config: str, sets: list[str] | None, extra: dict[str, object] | None = None) -> T1Config:
    overrides = list(sets or [])
    for item in overrides:
        if item.split("=", 1)[0].strip() in SECRET_KEYS:
            # argv is world-readable (ps, /proc/PID/cmdline): secrets come by env or file
            console.print(f"[red]config error:[/red] {item.split('=', 1)[0]} on the command line: "
                          "pass it as T1__VERIFIER__AUTH_TOKEN in the environment or set "
                          "verifier.auth_token_file to a file holding it")
            raise typer.Exit(2)
    overrides += [f"{k}={v}" for k, v in (extra or {}).items() if v is not None]
    try:
        return load_config(config, overrides)
    except (FileNotFoundError, ValueError, ValidationError) as exc:
        console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from None


def _preset_model_path(config: str, cfg: T1Config) -> bool:
    """Whether ``cfg.model.path`` is the one its preset or file names, untouched by env or --set."""
    try:
        own = load_config(config, [], environ={})
    except (FileNotFoundError, ValueError, ValidationError):
        return False
    return Path(cfg.model.path) == Path(own.model.path)


def _tokenizer(model_dir: str):
    """A model directory's tokenizer (its chat template); OSError when there is none."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _quiet_libraries() -> None:
    """The demo draws its own progress bars; per-file loading bars would bury them."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@app.command()
def generator(host: HostOpt = None, port: PortOpt = None, config: ConfigOpt = "tiny",
              set: SetOpt = None, name: NameOpt = None) -> None:
    """Run the vLLM generation service."""
    from services.generator.main import serve

    serve(_load(config, set, {"generator.host": host, "generator.port": port}), name)


@app.command()
def verifier(host: HostOpt = None, port: PortOpt = None, config: ConfigOpt = "tiny",
             set: SetOpt = None, name: NameOpt = None) -> None:
    """Run the verification service (REST API; queue worker when Redis is configured)."""
    from services.verifier.main import serve

    serve(_load(config, set, {"verifier.host": host, "verifier.port": port}), name)


@app.command()
def trainer(host: HostOpt = None, port: PortOpt = None, config: ConfigOpt = "tiny",
            set: SetOpt = None, name: NameOpt = None) -> None:
    """Run the DeepSpeed RL trainer until trainer.total_steps."""
    from services.trainer.main import serve

    raise typer.Exit(serve(_load(config, set, {"trainer.host": host, "trainer.port": port}), name))


@app.command()
def up(config: ConfigOpt = "tiny", set: SetOpt = None,
       timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 3600) -> None:
    """Start Redis + generator + verifier + trainer locally; run until the trainer finishes."""
    from services.common.logs import setup_logging
    from services.demo import prepare_model, rl_progress
    from services.stack import Stack

    setup_logging("stack")
    _quiet_libraries()
    cfg = _load(config, set)
    if not (Path(cfg.model.path) / "config.json").exists() and not _preset_model_path(config, cfg):
        # the tiny default is built only at the preset's own path: a mistyped path must not
        # quietly train a random model
        console.print(f"[red]no model at {cfg.model.path}[/red] (model.path): give a Hugging Face "
                      "model directory, or leave model.path at the preset's to build the tiny default")
        raise typer.Exit(2)
    prepare_model(cfg)
    with Stack(cfg) as stack:
        console.print(f"stack up: redis {stack.cfg.redis.url}, logs in {stack.run_dir}/logs")
        rl_progress(stack, console)
    console.print("stack stopped")


@app.command()
def status(run_dir: Annotated[str, typer.Option(help="run directory of `t1 up`/`t1 demo`")] = "runs/demo",
           redis_url: Annotated[Optional[str], typer.Option(help="Redis URL (default: the run's)")] = None,
           prefix: str = "t1") -> None:
    """Show a run's state: versions, queues, accounting, recent steps."""
    from services.common import streams, weights
    from services.common.ledger import Ledger

    info_file = Path(run_dir) / "stack.json"
    if redis_url is None:
        if not info_file.exists():
            console.print(f"[red]no stack.json in {run_dir}[/red]; pass --redis-url")
            raise typer.Exit(2)
        info = json.loads(info_file.read_text())
        redis_url, prefix = info["redis_url"], info.get("prefix", prefix)
    try:
        s = streams.Streams(streams.connect(redis_url), prefix)
        s.r.ping()
    except Exception as exc:  # a malformed URL (ValueError) or no answer
        console.print(f"[red]Redis at {streams.redacted(redis_url)} not reachable[/red]: {exc}")
        raise typer.Exit(1) from None
    table = Table(title=f"t1 status ({redis_url})")
    table.add_column("what")
    table.add_column("value")
    ann = weights.latest(s)
    table.add_row("latest weights", f"v{ann.version}" if ann else "none")
    syncs = {k.decode(): json.loads(v) for k, v in s.r.hgetall(s.key("generators:sync")).items()}
    for name, v in sorted(s.r.hgetall(s.key("generators")).items()):
        table.add_row(f"generator {name.decode()}", f"serving v{v.decode()}")
        if (sync := syncs.get(name.decode())) is not None:
            table.add_row(f"generator {name.decode()} last sync", sync_summary(sync))
    if (raw := s.r.get(s.key("trainer:broadcast"))) is not None:
        table.add_row("trainer last broadcast", broadcast_summary(json.loads(raw)))
    if (raw := s.r.get(s.key("feeder:source"))) is not None:
        table.add_row("prompts", source_summary(json.loads(raw), int(s.r.get(s.key("feeder:cursor")) or 0)))
    for stream in (streams.PROMPTS, streams.ROLLOUTS, streams.SCORED, streams.DEAD):
        table.add_row(f"stream {stream}", str(s.length(stream)))
    for k, v in sorted(Ledger(s).counts().items()):
        table.add_row(f"ledger {k}", str(v))
    steps = [json.loads(x) for x in s.r.lrange(s.key("trainer:steps"), -5, -1)]
    for rec in steps:
        table.add_row(f"step {rec['step']}", f"reward {rec['reward_mean']:.3f} acc {rec['accuracy']:.3f}")
    Console().print(table)


def sync_summary(sync: dict) -> str:
    """A generator's latest weight sync, as ``t1 status`` shows it."""
    if not sync.get("passed"):
        return f"[red]v{sync['version']} refused[/red]: {sync.get('reason', '?')}"
    gate = (f", gate max |Δ| {sync['gate_max_difference']:.2g} in {sync['gate_seconds'] * 1000:.0f} ms"
            if "gate_max_difference" in sync else ", no probe")
    via = f" by {sync['via']}" if "via" in sync else ""
    return f"v{sync['version']}{via} in {sync['seconds']:.2f} s{gate}"


def source_summary(identity: dict, cursor: int) -> str:
    """Where the feeder's prompts come from and how far it is, as ``t1 status`` shows it."""
    if not identity.get("size"):
        return f"task {identity.get('name')}: {cursor} enqueued"
    epoch, position = divmod(cursor, identity["size"])
    if cursor and not position:  # an epoch just completed, not the next one begun
        epoch, position = epoch - 1, identity["size"]
    return f"{identity['name']}: epoch {epoch + 1}, {position}/{identity['size']} records ({cursor} enqueued)"


def broadcast_summary(result: dict) -> str:
    """The trainer's latest weight broadcast, as ``t1 status`` shows it."""
    if result.get("ok"):
        return (f"v{result['version']} to {len(result['members'])} generator(s), "
                f"{result['bytes'] / 1e6:.1f} MB in {result['seconds']:.2f} s")
    return (f"[red]v{result['version']} given up[/red] after {result['seconds']:.1f} s: "
            f"{result.get('reason', '?')} (absent: {', '.join(result.get('absent', [])) or 'none'})")


@app.command()
def demo(quick: Annotated[bool, typer.Option(help="smallest preset, for a smoke test")] = False,
         config: Annotated[Optional[str], typer.Option("--config", "-c")] = None,
         set: SetOpt = None) -> None:
    """The main job: tiny model, SFT on synthesized CoT, RL on the local stack, report."""
    from services.common.logs import setup_logging
    from services.demo import run_demo

    setup_logging("demo", "WARNING")
    _quiet_libraries()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the in-process eval engine
    cfg = _load(config or ("quick" if quick else "tiny"), set)
    t0 = time.monotonic()
    report = run_demo(cfg, console)
    console.print(f"[green]demo finished in {time.monotonic() - t0:.0f}s[/green]; report: {report}")


@app.command()
def ablate(model: Annotated[Optional[str], typer.Option(
               help="SFT model every variant starts from (default: the demo's {run_dir}/model/sft)")] = None,
           variants: Annotated[Optional[list[str]], typer.Option(
               "--variant", help="run only these (names as in the table, e.g. 'K=4'); repeat")] = None,
           out: Annotated[str, typer.Option(help="where ablate.md/.json/.png and the runs go")] = "runs/ablate",
           config: ConfigOpt = "tiny", set: SetOpt = None) -> None:
    """The same RL budget with the entropy bonus off, a fixed anchor, and K=4; tabulated."""
    from services.ablate import VARIANTS, run_ablation
    from services.common.logs import setup_logging

    setup_logging("ablate", "WARNING")
    _quiet_libraries()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    cfg = _load(config, set)
    start = Path(model) if model else Path(cfg.run_dir) / "model" / "sft"
    if not (start / "config.json").exists():
        console.print(f"[red]no model at {start}[/red]: run `t1 demo` first or pass --model")
        raise typer.Exit(2)
    unknown = [v for v in variants or [] if v not in VARIANTS]
    if unknown:
        console.print(f"[red]unknown variant(s) {unknown}[/red]; known: {list(VARIANTS)}")
        raise typer.Exit(2)
    chosen = {name: VARIANTS[name] for name in (variants or VARIANTS)}
    t0 = time.monotonic()
    report = run_ablation(cfg, start, Path(out), console, chosen)
    console.print(f"[green]ablation finished in {time.monotonic() - t0:.0f}s[/green]; table: {report}")


@app.command("init-model")
def init_model(config: ConfigOpt = "tiny", set: SetOpt = None,
               tiny: Annotated[bool, typer.Option(
                   envvar="T1_BOOTSTRAP_TINY",
                   help="build + SFT the tiny default if model.path is missing; --no-tiny (or "
                        "T1_BOOTSTRAP_TINY=0): a missing model is an error")] = True) -> None:
    """Make sure ``model.path`` holds a model before the services start (deployments run it once)."""
    from services.common.logs import setup_logging
    from services.trainer.sft import run_sft
    from services.trainer.tiny_model import build_tiny_model

    setup_logging("init-model")
    cfg = _load(config, set)
    out = Path(cfg.model.path)
    if (out / "config.json").exists():
        console.print(f"model ready: {out}")
        return
    if not tiny:
        console.print(f"[red]no model at {out}[/red]: copy a Hugging Face model directory there")
        raise typer.Exit(2)
    run_sft(cfg, build_tiny_model(cfg.model, out.parent / "base"), out)
    console.print(f"tiny model built and fine-tuned: {out}")


@app.command()
def sft(data: Annotated[str, typer.Option(help="jsonl: prompt/response, problem/solution, "
                                             "question/answer or messages records")],
        model: Annotated[str, typer.Option(help="HF model directory to start from")],
        out: Annotated[str, typer.Option(help="where the fine-tuned model is written")],
        config: ConfigOpt = "tiny", set: SetOpt = None) -> None:
    """Supervised fine-tuning on the DeepSpeed engine (loss on response tokens only)."""
    from transformers import AutoTokenizer

    from services.common.logs import setup_logging
    from services.data.prompt_format import PromptFormat
    from services.trainer.sft import load_sft_records, run_sft

    setup_logging("sft")
    cfg = _load(config, set)
    if not (Path(model) / "config.json").exists():
        console.print(f"[red]not a model directory (no config.json):[/red] {model}")
        raise typer.Exit(2)
    if cfg.trainer.sft_steps < 1:  # 0 steps would write the input weights back as the output
        console.print("[red]trainer.sft_steps is 0[/red]: nothing to train; --set trainer.sft_steps=N")
        raise typer.Exit(2)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        pairs = load_sft_records(data, tokenizer, PromptFormat(cfg.prompt, tokenizer))
    except (OSError, ValueError) as exc:
        console.print(f"[red]bad SFT data:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"SFT on {len(pairs)} records for {cfg.trainer.sft_steps} steps")
    run_sft(cfg, Path(model), Path(out), data=pairs,
            progress=lambda step, loss: step % 50 == 0 and console.print(f"step {step} loss {loss:.4f}"))
    console.print(f"saved {out}")


@app.command()
def synthesize(data: Annotated[str, typer.Option(help="problems: .jsonl/.json/.parquet file or a datasets "
                                                    "directory (MATH, GSM8K or prompt/gold records)")],
               endpoints: Annotated[list[str], typer.Option("--endpoint", help="OpenAI-compatible base "
                                                            "URL; repeat to spread the load")],
               out: Annotated[str, typer.Option(help="jsonl of traces for `t1 sft` (prompt/response; chat "
                                                    "messages with prompt.style=chat)")],
               attempts: Annotated[int, typer.Option(min=1, help="samples per problem")] = 4,
               verifier_url: Annotated[Optional[str], typer.Option(
                   help="verifier REST service (default: the scorer in this process)")] = None,
               verifier_token: Annotated[Optional[str], typer.Option(envvar="T1_VERIFIER_TOKEN")] = None,
               limit: Annotated[Optional[int], typer.Option(min=0, help="first N problems only")] = None,
               split: Annotated[Optional[str], typer.Option(help="split of a datasets directory")] = None,
               model: Annotated[Optional[str], typer.Option(help="model name in the API (default: "
                                                                 "the one the first endpoint serves)")] = None,
               max_tokens: Annotated[int, typer.Option(min=1, help="tokens per attempt")] = 256,
               critique_tokens: Annotated[int, typer.Option(min=1)] = 128,
               temperature: float = 0.8,
               rewrite: Annotated[str, typer.Option(help="template, or llm (falls back to the "
                                                         "template when the rewrite does not verify)")] = "template",
               tokenizer: Annotated[Optional[str], typer.Option(
                   help="the endpoint model's directory, whose chat template formats the prompts "
                        "(needed with prompt.style=chat)")] = None,
               seed: int = 0, config: ConfigOpt = "tiny", set: SetOpt = None) -> None:
    """Trial-and-error CoT traces from LLM attempts, critiques and verifier verdicts (T1 SFT data)."""
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from services.common.logs import setup_logging
    from services.common.verifier_client import VerifierError
    from services.data.loaders import load_problems
    from services.data.prompt_format import PromptFormat
    from services.data.synthesize import EndpointError, SynthesisConfig
    from services.data.synthesize import synthesize as run

    setup_logging("synthesize", "WARNING")
    cfg = _load(config, set)
    if rewrite not in ("template", "llm"):
        console.print(f"[red]--rewrite must be template or llm[/red], not {rewrite!r}")
        raise typer.Exit(2)
    chat = cfg.prompt.style == "chat"
    if chat and not tokenizer:  # completions of the rendered template: it is needed here
        console.print("[red]prompt.style=chat needs --tokenizer[/red]: the endpoint model's directory, "
                      "whose chat template formats the prompts")
        raise typer.Exit(2)
    try:
        fmt = PromptFormat(cfg.prompt, _tokenizer(tokenizer) if chat else None)
        problems = load_problems(data, split, limit, fmt)
    except (OSError, ValueError, ImportError) as exc:
        console.print(f"[red]bad data:[/red] {exc}")
        raise typer.Exit(2) from None
    scfg = SynthesisConfig(attempts=attempts, model=model, max_tokens=max_tokens,
                           critique_tokens=critique_tokens, temperature=temperature, rewrite=rewrite, seed=seed,
                           stop=() if chat else SynthesisConfig.stop)
    progress = Progress(TextColumn("synthesizing"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("kept {task.fields[kept]}"), TimeElapsedColumn(), console=console)
    bar = progress.add_task("", total=len(problems), kept=0)
    kept = [0]

    def advance(record: dict | None) -> None:
        kept[0] += record is not None
        progress.update(bar, advance=1, kept=kept[0])

    try:
        with progress:
            stats = asyncio.run(run(problems, endpoints, out, scfg, verifier_url, verifier_token,
                                    cfg.verifier, advance, fmt))
    except (EndpointError, VerifierError) as exc:
        console.print(f"[red]synthesis stopped:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"kept {stats.kept}/{stats.problems} problems ({stats.correct_attempts}/{stats.attempts} "
                  f"attempts correct, {stats.no_correct_attempt} with none, {stats.trace_rejected} traces "
                  f"rejected, {stats.llm_rewrites} LLM rewrites) in {stats.seconds:.1f}s -> {out}")


DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="problems to evaluate on: .jsonl/.json/.parquet or a datasets directory (MATH, "
    "GSM8K or prompt/gold records), in file order (default: data.eval, else the task's held-out set)")]
SplitOpt = Annotated[Optional[str], typer.Option("--split", help="split of a datasets directory")]
EvalN = Annotated[Optional[int], typer.Option(
    "--n", min=1, help="problems: the first N (default: all of a file; eval_problems of the task)")]


def _eval_setup(config: str, sets: list[str] | None, models: list[str], data: str | None,
                split: str | None, n: int | None) -> tuple[T1Config, list]:
    """Config, checks and problems shared by the commands that load checkpoints into an
    in-process engine; every mistake here ends before the engine starts."""
    from services.evaluation import heldout_problems

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    _quiet_libraries()
    cfg = _load(config, sets)
    missing = [m for m in models if not (Path(m) / "config.json").exists()]
    if missing:
        console.print(f"[red]not a model directory (no config.json):[/red] {', '.join(missing)}")
        raise typer.Exit(2)
    if split is not None and data is None:
        console.print("[red]--split needs --data[/red]")
        raise typer.Exit(2)
    if data is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval": data, "eval_split": split})})
    try:
        tokenizer = None
        if cfg.prompt.style == "chat":  # the checkpoints of one run share the first one's template
            tokenizer = _tokenizer(models[0])
        problems = heldout_problems(cfg, n, tokenizer)
    except (OSError, ValueError, ImportError) as exc:
        console.print(f"[red]bad data:[/red] {exc}")
        raise typer.Exit(2) from None
    return cfg, problems


def _problem_set(cfg: T1Config, problems: list) -> str:
    return f"{len(problems)} problems of {problems[0].source}" if cfg.data.eval else \
        f"{len(problems)} held-out problems"


def _write_problems(path: Path, results: dict[str, dict]) -> None:
    """One line per (model, problem): responses, verdicts, per-budget correctness."""
    with path.open("w") as f:
        for label, r in results.items():
            for record in r["problems"]:
                f.write(json.dumps({"model": label, **record}) + "\n")


def _evaluate(cfg: T1Config, models: list[str], problems: list, title: str, **kw) -> dict[str, dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from services.evaluation import default_budgets, evaluate_checkpoints, generation_passes

    console.print(f"{title}: {len(models)} model(s) on {_problem_set(cfg, problems)}")
    started = time.monotonic()
    max_tokens = cfg.generator.max_tokens
    passes = generation_passes(kw.get("accuracy", True), kw.get("budgets") or default_budgets(max_tokens),
                               max_tokens)
    # one step per problem and generation pass (greedy, samples, the budget curve's greedy)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    bar = progress.add_task(models[0], total=len(problems) * passes)

    def done(label: str, _result: dict) -> None:
        progress.console.print(f"  {label}: done ({time.monotonic() - started:.0f}s)")
        following = models.index(label) + 1
        if following < len(models):
            progress.reset(bar, total=len(problems) * passes, description=models[following])

    with progress:
        return evaluate_checkpoints(cfg, {m: m for m in models}, problems=problems, progress=done,
                                    tick=lambda: progress.advance(bar), **kw)


@app.command("filter")
def filter_(model: Annotated[str, typer.Option(help="HF model dir whose pass rates decide")],
            data: Annotated[str, typer.Option(help="problems: .jsonl/.json/.parquet or a datasets directory")],
            out: Annotated[str, typer.Option(help="jsonl of the kept problems, each with its pass_rate")],
            k: Annotated[int, typer.Option(min=1, help="samples per problem")] = 16,
            max_pass: Annotated[float, typer.Option(min=0.0, max=1.0, help="keep problems whose "
                                                    "pass rate is at most this")] = 0.3,
            split: SplitOpt = None, n: EvalN = None,
            config: ConfigOpt = "tiny", set: SetOpt = None) -> None:
    """T1's difficulty filter: sample k answers per problem, keep those the model passes at
    most max_pass of the time (too-easy problems teach RL nothing)."""
    from services.evaluation import filter_record, pass_rates

    cfg, problems = _eval_setup(config, set, [model], data, split, n)
    temperature = cfg.eval_sampling_temperature
    console.print(f"sampling {k} answers for each of {_problem_set(cfg, problems)} at temperature {temperature}")
    rates = pass_rates(cfg, model, problems, k, temperature)
    kept = [filter_record(p, r) for p, r in zip(problems, rates) if r <= max_pass]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(json.dumps(r) + "\n" for r in kept))
    console.print(f"kept {len(kept)}/{len(problems)} problems with pass rate <= {max_pass} "
                  f"(mean pass rate {sum(rates) / len(rates):.3f}) -> {out}")


@app.command("eval")
def eval_(models: Annotated[list[str], typer.Option("--model", help="HF model dir; repeat to compare "
                                                                  "checkpoints of one run")],
          config: ConfigOpt = "tiny", set: SetOpt = None, data: DataOpt = None, split: SplitOpt = None,
          n: EvalN = None,
          k: Annotated[int, typer.Option(min=1, help="samples per problem for pass@k / maj@k")] = 8,
          out: Annotated[str, typer.Option(help="where eval.json, problems.jsonl and scaling.png go")]
          = "runs/eval") -> None:
    """Greedy / pass@1 / pass@k / maj@k and the inference-scaling curve per checkpoint, on the
    held-out problems or a file's; every response and verdict goes to problems.jsonl."""
    from services.evaluation import plot_scaling

    cfg, problems = _eval_setup(config, set, models, data, split, n)
    results = _evaluate(cfg, models, problems, "evaluating", k=k)
    table = Table(title=f"accuracy ({_problem_set(cfg, problems)}, k={k})")
    for col in ("model", "greedy", "pass@1", f"pass@{k}", f"maj@{k}"):
        table.add_column(col)
    for label, r in results.items():
        a = r["accuracy"]
        table.add_row(label, f"{a.greedy:.3f}", f"{a.pass1:.3f}", f"{a.pass_k:.3f}", f"{a.maj_k:.3f}")
    Console().print(table)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_scaling({label: r["scaling"] for label, r in results.items()}, out_dir / "scaling.png")
    (out_dir / "eval.json").write_text(json.dumps(
        {label: {"accuracy": vars(r["accuracy"]), "scaling": r["scaling"]} for label, r in results.items()},
        indent=2))
    _write_problems(out_dir / "problems.jsonl", results)
    console.print(f"numbers: {out_dir / 'eval.json'}; per problem: {out_dir / 'problems.jsonl'}; "
                  f"scaling curve: {out_dir / 'scaling.png'}")


@app.command()
def scaling(models: Annotated[list[str], typer.Option("--model", help="HF model dir; repeat to put "
                                                                   "several checkpoints on one figure")],
            budgets: Annotated[Optional[str], typer.Option(
                help="comma-separated token budgets (default: 4 .. generator.max_tokens)")] = None,
            data: DataOpt = None, split: SplitOpt = None, n: EvalN = None,
            out: Annotated[str, typer.Option(help="where scaling.json, problems.jsonl and scaling.png go")]
            = "runs/scaling",
            config: ConfigOpt = "tiny", set: SetOpt = None) -> None:
    """T1's inference scaling: greedy accuracy when the reasoning is cut at each token budget and
    the answer is forced, for each checkpoint."""
    from services.evaluation import plot_scaling

    try:
        chosen = sorted({int(b) for b in budgets.split(",")}) if budgets else None
    except ValueError:
        console.print(f"[red]--budgets must be comma-separated integers[/red], not {budgets!r}")
        raise typer.Exit(2) from None
    cfg, problems = _eval_setup(config, set, models, data, split, n)
    if chosen is not None and (chosen[0] < 1 or chosen[-1] > cfg.generator.max_tokens):
        console.print(f"[red]budgets must lie in 1..generator.max_tokens ({cfg.generator.max_tokens})[/red]")
        raise typer.Exit(2)
    results = _evaluate(cfg, models, problems, "measuring the budget curve", budgets=chosen, accuracy=False)
    curves = {label: r["scaling"] for label, r in results.items()}
    table = Table(title=f"greedy accuracy by reasoning budget ({_problem_set(cfg, problems)})")
    table.add_column("model")
    for b in sorted(next(iter(curves.values()))):
        table.add_column(str(b))
    for label, curve in curves.items():
        table.add_row(label, *(f"{curve[b]:.3f}" for b in sorted(curve)))
    Console().print(table)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_scaling(curves, out_dir / "scaling.png")
    (out_dir / "scaling.json").write_text(json.dumps(curves, indent=2))
    _write_problems(out_dir / "problems.jsonl", results)
    console.print(f"numbers: {out_dir / 'scaling.json'}; per problem: {out_dir / 'problems.jsonl'}; "
                  f"scaling curve: {out_dir / 'scaling.png'}")


@app.command()
def plan(config: ConfigOpt = "tiny", set: SetOpt = None) -> None:
    """Where each service runs and the memory per GPU, checked before anything starts (docs/gpu.md)."""
    from services.plan import PlanError
    from services.plan import plan as make_plan

    cfg = _load(config, set)
    try:
        p = make_plan(cfg)
    except PlanError as exc:
        console.print(f"[red]t1 plan: cannot work:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    out = Console()
    s = p.shape
    size = f"{s.params / 1e9:.2f}B" if s.params >= 1e8 else f"{s.params / 1e6:.2f}M"
    out.print(f"model {s.name}: {size} parameters, {s.layers} layers, hidden {s.hidden}, "
              f"{s.heads}/{s.kv_heads} heads, vocab {s.vocab} (from {p.shape_source})")
    if p.on_gpus:
        pl = cfg.placement
        table = Table(title=f"placement: {pl.nodes} node(s) x {pl.gpus_per_node} GPUs of {pl.gpu_memory_gib:g} GiB")
        table.add_column("node")
        table.add_column("GPU: what runs there")
        for i, gpus in enumerate(p.nodes):
            table.add_row(str(i), ", ".join(f"{g}: {what}" for g, what in enumerate(gpus)))
        out.print(table)
    for est in (p.trainer, p.generator):
        fits = "unchecked" if est.capacity is None else f"of {est.capacity:g} GiB"
        table = Table(title=f"{est.what}: {est.total:.1f} GiB {fits}")
        table.add_column("memory")
        table.add_column("GiB", justify="right")
        for part, gib in est.parts.items():
            table.add_row(part, f"{gib:.2f}")
        out.print(table)
        for note in est.notes:
            out.print(f"  {note}")
    for line in p.deploy:
        out.print(line)
    for line in p.warnings:
        out.print(f"[yellow]note:[/yellow] {line}")
    out.print("estimates, not measurements: docs/gpu.md says how each term is counted and how it "
              "compares with a measured peak")


@app.command()
def bench(name: Annotated[str, typer.Argument(help="benchmark name (a file in bench/)")]) -> None:
    """Run a benchmark from bench/; it ends with RESULT lines."""
    bench_dir = REPO_ROOT / "bench"
    available = sorted(p.stem for p in bench_dir.glob("*.py") if not p.stem.startswith("_"))
    if name not in available:
        console.print(f"[red]unknown benchmark {name!r}[/red]; available: {', '.join(available) or 'none'}")
        raise typer.Exit(2)
    sys.argv = [name]
    runpy.run_path(str(bench_dir / f"{name}.py"), run_name="__main__")


if __name__ == "__main__":
    app()
