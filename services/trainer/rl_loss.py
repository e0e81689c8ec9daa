"""One RL step's forward and backward over a batch of scored groups (DESIGN.md §5).

1. The batch as sequences (prompt + one sample each), sharded over the ranks by tokens and cut
   into micro-batches by a token budget: a group's samples may land in different micro-batches
   or on different ranks.
2. The anchor pass (no gradient): each sampled token's log-prob under the anchor, and each
   sequence's KL estimate sum_t(log pi_behaviour - log pi_anchor) -- the samples were drawn
   from the behaviour policy, so this is the unbiased estimate of KL(behaviour || anchor).
3. Advantages for whole groups: RLOO over the rewards (with T1's KL folded in and centred).
4. The loss over the micro-batches, each pass weighted by its share of the global token count
   (times the world size, because DeepSpeed averages gradients over ranks): the sum is exactly
   the token-level mean over the whole batch, however it was split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.common.config import TrainerConfig
from services.common.schemas import ScoredGroup
from services.trainer import dist
from services.trainer.accumulate import backward_passes
from services.trainer.anchor import Anchor
from services.trainer.objective import (
    Correction,
    LossInputs,
    LossSettings,
    kl_shaped_rewards,
    ratio_quantiles,
    rloo_advantages,
    segment_sum,
    t1_policy_loss,
)
from services.trainer.packing import Packed, micro_batches, pack


@dataclass
class Sequence:
    group: int
    prompt_ids: list[int]
    response_ids: list[int]
    behaviour_logp: list[float]
    temperature: float
    top_p: float

    @property
    def tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def sequences(groups: list[ScoredGroup]) -> list[Sequence]:
    return [Sequence(gi, g.rollout.prompt_token_ids, s.token_ids, s.logprobs,
                     g.rollout.temperature, g.rollout.top_p)
            for gi, g in enumerate(groups) for s in g.rollout.samples]


def group_advantages(groups: list[ScoredGroup], seq_kl: torch.Tensor, kl_mode: str,
                     beta: float) -> torch.Tensor:
    """RLOO per group ([N], sequence order); groups may keep different numbers of samples.
    With kl_mode=reward the KL is folded into each sample's reward first and centred with it."""
    out, offset = [], 0
    for g in groups:
        r = torch.tensor([v.reward for v in g.verdicts], dtype=torch.float32)
        k = len(r)
        if kl_mode == "reward":
            r = kl_shaped_rewards(r, seq_kl[offset:offset + k], beta)
        out.append(rloo_advantages(r.unsqueeze(0)).squeeze(0))
        offset += k
    return torch.cat(out)


def loss_settings(tc: TrainerConfig) -> LossSettings:
    return LossSettings(eps_low=tc.clip_eps_low, eps_high=tc.clip_eps_high, dual_clip=tc.dual_clip,
                        entropy_coef=tc.entropy_coef,
                        kl_loss_coef=tc.kl_coef if tc.kl_mode == "loss" else 0.0,
                        correction=Correction(tc.is_correction, tc.is_level, tc.is_low, tc.is_high))


class StepLoss:
    """Forward and backward of one step on this rank's share; statistics over all ranks."""

    def __init__(self, engine, anchor: Anchor, tc: TrainerConfig, pad_id: int) -> None:
        self.engine = engine
        self.anchor = anchor
        self.tc = tc
        self.pad_id = pad_id
        self.device = engine.device
        self.settings = loss_settings(tc)

    def _packed(self, seqs: list[Sequence]) -> tuple[Packed, torch.Tensor, torch.Tensor]:
        """The micro-batch on the engine's device, with each token's temperature and top-p."""
        batch = pack([(s.prompt_ids, s.response_ids) for s in seqs], self.tc.pack_row_tokens,
                     self.pad_id).to(self.device)
        per_seq = torch.tensor([[s.temperature, s.top_p] for s in seqs], dtype=torch.float32,
                               device=self.device)[batch.seq_index]
        return batch, per_seq[:, 0], per_seq[:, 1]

    def _flat(self, seqs: list[Sequence], values) -> torch.Tensor:
        return torch.tensor([x for s in seqs for x in values(s)], dtype=torch.float32,
                            device=self.device)

    def anchor_pass(self, seqs: list[Sequence], mine: list[list[int]], n: int):
        """Anchor log-probs per sequence (this rank's) and the global per-sequence KL [n]."""
        anchor_logp: dict[int, torch.Tensor] = {}
        seq_kl = torch.zeros(n, dtype=torch.float64)
        if self.tc.kl_mode == "none":
            return anchor_logp, seq_kl
        with self.anchor.on_device():
            for mb in mine:
                batch, temp, top_p = self._packed([seqs[i] for i in mb])
                logp = self.anchor.token_logprobs(batch, temp, top_p)
                behaviour = self._flat([seqs[i] for i in mb], lambda s: s.behaviour_logp)
                # one device-to-host copy per micro-batch, not one per sequence
                kl = segment_sum(behaviour - logp, batch.seq_index, len(mb)).double().cpu()
                seq_kl[torch.tensor(mb)] = kl
                anchor_logp.update(zip(mb, logp.split(batch.lengths)))
        return anchor_logp, dist.all_reduce(seq_kl)  # each rank filled its own sequences

    def run(self, groups: list[ScoredGroup]) -> dict:
        tc = self.tc
        seqs = sequences(groups)
        n = len(seqs)
        total = sum(len(s.response_ids) for s in seqs)
        mine_idx = dist.balanced_shards([s.tokens for s in seqs], dist.world_size())[dist.rank()]
        mine = [[mine_idx[j] for j in mb]
                for mb in micro_batches([seqs[i].tokens for i in mine_idx], tc.micro_batch_tokens,
                                        tc.pack_row_tokens)]
        anchor_logp, seq_kl = self.anchor_pass(seqs, mine, n)
        advantages = group_advantages(groups, seq_kl.float(), tc.kl_mode, tc.kl_coef)

        def loss_sum(mb: list[int]):
            loss, stats, log_ratio = self._micro([seqs[i] for i in mb], mb, advantages, anchor_logp)
            return loss, ({"loss": loss.item(), **stats}, log_ratio)

        parts, n_passes = backward_passes(self.engine, mine, loss_sum, total)
        sums: dict[str, float] = {}
        for stats, _ in parts:
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
        log_ratios = [lr for _, lr in parts]
        keys = sorted(sums)
        summed = dist.all_reduce(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
        out = {k: v / max(total, 1) for k, v in zip(keys, summed.tolist())}
        everything = dist.all_gather_1d(torch.cat(log_ratios) if log_ratios else torch.zeros(0, device=self.device))
        out.update(ratio_quantiles(everything))
        return {**out, "advantages": advantages, "seq_kl": seq_kl, "tokens": total,
                "micro_batches": n_passes}

    def _micro(self, seqs: list[Sequence], idx: list[int], advantages: torch.Tensor,
               anchor_logp: dict[int, torch.Tensor]):
        batch, temp, top_p = self._packed(seqs)
        logp, entropy = self.engine(batch.input_ids, batch.position_ids, batch.score_at,
                                    batch.targets, temp, top_p)
        inp = LossInputs(
            logp=logp, entropy=entropy,
            behaviour_logp=self._flat(seqs, lambda s: s.behaviour_logp),
            advantages=advantages.to(self.device)[torch.tensor(idx, device=self.device)][batch.seq_index],
            seq_index=batch.seq_index, n_seqs=len(seqs),
            anchor_logp=torch.cat([anchor_logp[i] for i in idx]) if anchor_logp else None)
        loss_sum, stats = t1_policy_loss(inp, self.settings)
        return loss_sum, stats, (logp - inp.behaviour_logp).detach()
