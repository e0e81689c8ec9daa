"""The T1 RL objective as small pure functions (DESIGN.md §5).

Shapes: G groups (prompts) of K samples; N = G*K sequences; T response positions; V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: A_i = r_i - mean_{j != i} r_j within each group.  rewards: [G, K] -> [G, K]."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per group")
    others_mean = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - others_mean


def token_logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor,
                               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token and the full-vocabulary entropy at each position.

    logits: [N, T, V] (already aligned so logits[:, t] predicts targets[:, t]); targets: [N, T].
    Temperature-scaled, because the behaviour policy sampled from softmax(logits / T).
    """
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def clipped_surrogate(logp: torch.Tensor, behaviour_logp: torch.Tensor, advantages: torch.Tensor,
                      eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, as a loss (to minimise), and the clip indicator.

    logp, behaviour_logp: [N, T]; advantages: [N] broadcast over T. The asymmetric range
    [1-eps_low, 1+eps_high] also truncates the importance weight of stale samples.
    """
    ratio = torch.exp(logp - behaviour_logp)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    return loss, (unclipped != clipped).float()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level mean over every response token in the batch (not per-sequence first)."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass
class LossInputs:
    logits: torch.Tensor  # [N, T, V] aligned with response_ids
    response_ids: torch.Tensor  # [N, T]
    response_mask: torch.Tensor  # [N, T] 1 for real response tokens
    behaviour_logp: torch.Tensor  # [N, T] from the generator
    advantages: torch.Tensor  # [N]


def t1_policy_loss(inp: LossInputs, temperature: float, eps_low: float, eps_high: float,
                   entropy_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss minus the entropy bonus, token-level mean."""
    logp, entropy = token_logprobs_and_entropy(inp.logits, inp.response_ids, temperature)
    pg, clipped = clipped_surrogate(logp, inp.behaviour_logp, inp.advantages, eps_low, eps_high)
    mask = inp.response_mask.float()
    pg_loss = masked_mean(pg, mask)
    ent = masked_mean(entropy, mask)
    loss = pg_loss - entropy_coef * ent
    with torch.no_grad():
        stats = {
            "pg_loss": pg_loss.item(),
            "entropy": ent.item(),
            "clip_frac": masked_mean(clipped, mask).item(),
            "ratio_dev": masked_mean((logp - inp.behaviour_logp).abs(), mask).item(),
        }
    return loss, stats
