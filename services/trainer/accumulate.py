"""Gradient accumulation over micro-batches, the same for SFT and RL.

Each pass's loss is a SUM over its tokens; it is scaled by world / (the global batch's token
count) -- the world factor because DeepSpeed averages gradients over ranks -- so the summed
gradient is exactly that of the token-level mean over the whole batch, however the batch was
split into micro-batches and sharded over ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from services.trainer import dist

T = TypeVar("T")
R = TypeVar("R")


def backward_passes(engine, micro: list[T], loss_sum: Callable[[T], tuple[torch.Tensor, R]],
                    total_tokens: int) -> tuple[list[R], int]:
    """Forward/backward of this rank's micro-batches; returns what ``loss_sum`` gave beside
    each loss (for the real passes) and the number of passes made.

    ZeRO-3 gathers parameters inside forward (a collective): every rank runs as many passes; a
    rank with fewer micro-batches repeats its last one with weight 0."""
    if not micro:
        raise ValueError("a rank got no micro-batch: more ranks than sequences in the batch")
    world = dist.world_size()
    n_passes = int(dist.all_reduce(torch.tensor(len(micro)), torch.distributed.ReduceOp.MAX).item())
    scale = world / max(total_tokens, 1)
    out: list[R] = []
    engine.train()
    for p in range(n_passes):
        real = p < len(micro)
        # only the last pass is DeepSpeed's accumulation boundary: no early reduce/step
        engine.set_gradient_accumulation_boundary(p == n_passes - 1)
        loss, extra = loss_sum(micro[min(p, len(micro) - 1)])
        engine.backward(loss * (scale if real else 0.0), scale_wrt_gas=False)
        if real:
            out.append(extra)
    return out, n_passes
