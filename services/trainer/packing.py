"""Token layout of a micro-batch: sequences into rows, and the positions that score them.

One layout for SFT and RL. Each sequence is prompt + response; only the response tokens are
scored, each by the position before it. Rows are right-padded and carry ``position_ids``; with
``row_tokens > 0`` several sequences share a row (padding-free packing: position ids restart at
each sequence, from which transformers builds a block-diagonal mask, and flash-attention runs
variable-length kernels), else every sequence has a row of its own. The scored tokens come out
flat, sequence after sequence, so the loss never sees padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Seq = tuple[list[int], list[int]]  # prompt ids, response ids


@dataclass
class Packed:
    input_ids: torch.Tensor  # [R, W]
    position_ids: torch.Tensor  # [R, W]
    score_at: torch.Tensor  # [M] flat indices into input_ids.view(-1): position p scores token p+1
    targets: torch.Tensor  # [M] the response tokens, sequence after sequence
    seq_index: torch.Tensor  # [M] which sequence (0..n-1, in input order) each token belongs to
    lengths: list[int]  # response tokens per sequence

    @property
    def n_tokens(self) -> int:
        return int(self.targets.numel())

    def to(self, device) -> Packed:
        move = {k: v.to(device, non_blocking=True) for k, v in vars(self).items()
                if isinstance(v, torch.Tensor)}
        return Packed(**move, lengths=self.lengths)


def assign_rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """Sequence indices per row: first fit up to ``row_tokens`` (0: one sequence per row);
    a sequence longer than that gets a row of its own."""
    if row_tokens <= 0:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    fill: list[int] = []
    for i, n in enumerate(lengths):
        for r, used in enumerate(fill):
            if used + n <= row_tokens:
                rows[r].append(i)
                fill[r] += n
                break
        else:
            rows.append([i])
            fill.append(n)
    return rows


def padded_tokens(lengths: list[int], row_tokens: int) -> int:
    """Tokens the layout occupies: rows x the widest row."""
    rows = assign_rows(lengths, row_tokens)
    return len(rows) * max((sum(lengths[i] for i in r) for r in rows), default=0)


def pack(seqs: list[Seq], row_tokens: int, pad_id: int) -> Packed:
    for i, (prompt, _) in enumerate(seqs):
        if not prompt:
            raise ValueError(f"sequence {i} has an empty prompt: its first token has no position to be scored from")
    lengths = [len(p) + len(r) for p, r in seqs]
    rows = assign_rows(lengths, row_tokens)
    width = max(sum(lengths[i] for i in r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    where: dict[int, tuple[int, int]] = {}  # sequence -> (row, offset)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            prompt, response = seqs[i]
            ids[r, at:at + lengths[i]] = torch.tensor(prompt + response, dtype=torch.long)
            pos[r, at:at + lengths[i]] = torch.arange(lengths[i])
            where[i] = (r, at)
            at += lengths[i]
        pos[r, at:] = torch.arange(width - at)  # the padding tail: a segment of its own
    score_at, targets, seq_index = [], [], []
    for i, (prompt, response) in enumerate(seqs):
        r, at = where[i]
        first = r * width + at + len(prompt) - 1
        score_at.append(torch.arange(first, first + len(response)))
        targets.append(torch.tensor(response, dtype=torch.long))
        seq_index.append(torch.full((len(response),), i, dtype=torch.long))
    return Packed(ids, pos, torch.cat(score_at), torch.cat(targets), torch.cat(seq_index),
                  [len(r) for _, r in seqs])


def micro_batches(lengths: list[int], max_tokens: int, row_tokens: int = 0) -> list[list[int]]:
    """Consecutive sequences (indices) per micro-batch, each layout up to ``max_tokens`` padded
    tokens (0: all in one). A sequence larger than the budget gets a micro-batch of its own."""
    if max_tokens <= 0 or not lengths:
        return [list(range(len(lengths)))]
    out: list[list[int]] = [[]]
    for i in range(len(lengths)):
        candidate = out[-1] + [i]
        if out[-1] and padded_tokens([lengths[j] for j in candidate], row_tokens) > max_tokens:
            out.append([i])
        else:
            out[-1] = candidate
    return out
