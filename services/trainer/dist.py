"""Data-parallel plumbing for the RL trainer: ranks, broadcasts, sharding, micro-batches.

Rank 0 alone talks to Redis; every other rank receives the admitted batch from it. Groups are
the unit of sharding and of micro-batching: RLOO (and the KL folded into the reward) needs all
K samples of a prompt in one forward pass.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from services.common.schemas import ScoredGroup


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_cores() -> int:
    """This process's share of the cores it may run on, split among the ranks on this host."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
    return max(1, len(os.sched_getaffinity(0)) // ranks_here)


def is_main() -> bool:
    return rank() == 0


def broadcast(obj):
    """``obj`` as rank 0 holds it, on every rank (a no-op in a single process)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


def all_gather_lists(xs: list) -> list:
    if world_size() == 1:
        return list(xs)
    out: list = [None] * world_size()
    dist.all_gather_object(out, xs)
    return [x for part in out for x in part]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def group_tokens(g: ScoredGroup) -> int:
    """Tokens a group occupies once right-padded: K rows of its longest sequence."""
    p = len(g.rollout.prompt_token_ids)
    return len(g.rollout.samples) * (p + max(len(s.token_ids) for s in g.rollout.samples))


def shard(groups: list[ScoredGroup], n: int) -> list[list[ScoredGroup]]:
    """Whole groups onto ``n`` ranks, balanced by tokens (greedy, largest first; deterministic)."""
    if len(groups) < n:
        raise ValueError(f"{len(groups)} groups cannot feed {n} ranks: set groups_per_step >= world size")
    order = sorted(range(len(groups)), key=lambda i: (-group_tokens(groups[i]), i))
    parts: list[list[int]] = [[] for _ in range(n)]
    load = [0] * n
    for i in order:
        r = min(range(n), key=lambda j: (load[j], len(parts[j]), j))
        parts[r].append(i)
        load[r] += group_tokens(groups[i])
    return [[groups[i] for i in sorted(p)] for p in parts]


def micro_batches(groups: list[ScoredGroup], max_tokens: int) -> list[list[ScoredGroup]]:
    """Consecutive whole groups packed up to ``max_tokens`` padded tokens (0: one batch).
    A group larger than the budget gets a micro-batch of its own."""
    if max_tokens <= 0:
        return [groups]
    out: list[list[ScoredGroup]] = []
    for g in groups:
        candidate = (out[-1] + [g]) if out else None
        if candidate and _padded(candidate) <= max_tokens:
            out[-1] = candidate
        else:
            out.append([g])
    return out


def _padded(groups: list[ScoredGroup]) -> int:
    """Padded tokens of one micro-batch: every row padded to the longest sequence in it."""
    rows = sum(len(g.rollout.samples) for g in groups)
    longest = max(len(g.rollout.prompt_token_ids) + max(len(s.token_ids) for s in g.rollout.samples)
                  for g in groups)
    return rows * longest


@contextlib.contextmanager
def full_params(engine):
    """Full parameters on every rank for the duration (ZeRO-3 partitions them; 0-2 do not)."""
    if engine.zero_optimization_stage() < 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        yield
