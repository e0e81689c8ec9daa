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
    anchor_logp: torch.Tensor | None = None  # [N, T] under the anchor; needed for the k3 term


def t1_policy_loss(inp: LossInputs, temperature: float, eps_low: float, eps_high: float,
                   entropy_coef: float, kl_loss_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss - alpha * entropy (+ beta * k3 KL to the anchor when the KL
    is a loss term rather than folded into the reward), each a token-level mean."""
    logp, entropy = token_logprobs_and_entropy(inp.logits, inp.response_ids, temperature)
    pg, clipped = clipped_surrogate(logp, inp.behaviour_logp, inp.advantages, eps_low, eps_high)
    mask = inp.response_mask.float()
    pg_loss = masked_mean(pg, mask)
    ent = masked_mean(entropy, mask)
    loss = pg_loss - entropy_coef * ent
    kl = None
    if inp.anchor_logp is not None:
        kl = masked_mean(kl_k3(logp, inp.anchor_logp), mask)
        if kl_loss_coef:
            loss = loss + kl_loss_coef * kl
    with torch.no_grad():
        ratio = torch.exp(logp - inp.behaviour_logp)
        stats = {
            "pg_loss": pg_loss.item(),
            "entropy": ent.item(),
            "clip_frac": masked_mean(clipped, mask).item(),
            "ratio_dev": masked_mean((logp - inp.behaviour_logp).abs(), mask).item(),
            "is_weight_mean": masked_mean(ratio, mask).item(),
            "is_weight_max": (ratio * mask).max().item(),
            "kl_anchor": kl.item() if kl is not None else 0.0,
        }
    return loss, stats


# -- KL to the anchor (the dynamic reference model) -----------------------------------------
def kl_k1(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """Per-token log-ratio log pi(y) - log pi_anchor(y); its sum over a response estimates KL."""
    return logp - anchor_logp


def kl_k3(logp: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator exp(a - p) - (a - p) - 1: non-negative, unbiased for KL(pi||anchor)."""
    d = anchor_logp - logp
    return torch.exp(d) - d - 1.0


def kl_shaped_rewards(rewards: torch.Tensor, seq_kl: torch.Tensor, beta: float) -> torch.Tensor:
    """T1's choice: fold the KL into the reward, r_i - beta * KL_i ([G, K]); RLOO then centres
    the shaped rewards within each group."""
    return rewards - beta * seq_kl


# -- oversampling: which of the K samples a group trains on ------------------------------------
def select_samples(rewards: list[float], rule: str, size: int | None = None) -> list[int]:
    """Indices of the samples to keep.

    all: every sample. balanced: as many correct (max reward) as incorrect ones, the first of
    each in order. max_variance: a subset of ``size`` whose reward variance is largest -- the
    highest- and lowest-reward halves.
    """
    k = len(rewards)
    if rule == "all":
        return list(range(k))
    if rule == "balanced":
        top = max(rewards)
        good = [i for i in range(k) if rewards[i] == top]
        bad = [i for i in range(k) if rewards[i] != top]
        n = min(len(good), len(bad))
        return sorted(good[:n] + bad[:n])
    if rule == "max_variance":
        m = min(size or k, k)
        order = sorted(range(k), key=lambda i: (rewards[i], i))
        low, high = order[: m // 2], order[k - (m - m // 2):]
        return sorted(low + high)
    raise ValueError(f"unknown keep rule {rule!r}")
