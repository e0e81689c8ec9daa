"""Data-parallel plumbing for the RL trainer: ranks, broadcasts, sharding, micro-batches.

Rank 0 alone talks to Redis; every other rank receives the admitted batch from it. Sequences are
the unit of sharding and of micro-batching: a group's RLOO advantages (and the KL folded into
its rewards) are computed for the whole group before its samples are split.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


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


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on at least one rank (every rank gets the same answer)."""
    if world_size() == 1:
        return flag
    return bool(all_reduce(torch.tensor([int(flag)]), op=dist.ReduceOp.MAX).item())


def comm_device() -> torch.device:
    """Where collectives' tensors must live: NCCL reduces CUDA tensors only, gloo CPU ones."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """``t`` reduced over the ranks, on ``t``'s own device (moved to the backend's for the call)."""
    if world_size() == 1:
        return t
    on = t.to(comm_device())
    dist.all_reduce(on, op=op)
    return on.to(t.device)


def all_gather_1d(t: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D tensor (lengths may differ), concatenated in rank order."""
    if world_size() == 1:
        return t
    dev = comm_device()
    n = torch.tensor([t.numel()], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(x.item() for x in sizes))
    padded = torch.zeros(longest, dtype=t.dtype, device=dev)
    padded[: t.numel()] = t.to(dev)
    parts = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(k.item())] for p, k in zip(parts, sizes)]).to(t.device)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def balanced_shards(sizes: list[int], n: int) -> list[list[int]]:
    """Indices of ``sizes`` onto ``n`` ranks, balanced by size (greedy, largest first;
    deterministic, so every rank computes the same split). Each part stays in input order."""
    if len(sizes) < n:
        raise ValueError(f"{len(sizes)} sequences cannot feed {n} ranks: set groups_per_step >= world size")
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    parts: list[list[int]] = [[] for _ in range(n)]
    load = [0] * n
    for i in order:
        r = min(range(n), key=lambda j: (load[j], len(parts[j]), j))
        parts[r].append(i)
        load[r] += sizes[i]
    return [sorted(p) for p in parts]


@contextlib.contextmanager
def full_params(engine):
    """Full parameters on every rank for the duration (ZeRO-3 partitions them; 0-2 do not)."""
    if engine.zero_optimization_stage() < 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        yield
