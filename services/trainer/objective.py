"""The T1 RL objective as small pure functions (DESIGN.md §5).

Shapes: G groups (prompts) of K samples; N = G*K sequences; M scored response tokens (flat,
sequence after sequence, no padding); V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """Log-prob of each target token and the full-vocabulary entropy at each position, from
    materialised logits (the reference the trainer's chunked path, ``policy.py``, is tested
    against; the trainer itself never builds ``[N, T, V]``).

    logits: [..., V] aligned so logits[..., t, :] predicts targets[..., t]; targets: [...].
    Temperature-scaled, because the behaviour policy sampled from softmax(logits / T).
    """
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def clipped_surrogate(logp: torch.Tensor, behaviour_logp: torch.Tensor, advantages: torch.Tensor,
                      eps_low: float, eps_high: float, dual_clip: float = 0.0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, as a loss (to minimise), with dual clipping.

    All [M] (one advantage per token: its sequence's). For A > 0 the importance ratio is cut at
    1 + eps_high (no gradient above it); for A < 0 the plain clip leaves large ratios unbounded,
    so dual clipping (Ye et al. 2020; verl's ``clip_ratio_c``) caps the loss at -c * A (no
    gradient there either). Returns the loss and two indicators: the clip took effect, and the
    dual clip did.
    """
    ratio = torch.exp(logp - behaviour_logp)
    unclipped = -ratio * advantages
    clipped = -torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = torch.maximum(unclipped, clipped)
    clip_hit = (clipped > unclipped).float()
    dual_hit = torch.zeros_like(clip_hit)
    if dual_clip > 1.0:
        cap = -dual_clip * advantages
        dual = (advantages < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
        dual_hit = dual.float()
    return loss, clip_hit, dual_hit


def segment_sum(x: torch.Tensor, seq_index: torch.Tensor, n: int) -> torch.Tensor:
    """Per-sequence sums of a flat [M] token quantity -> [n]."""
    return torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, seq_index, x)


@dataclass
class Correction:
    """Rollout correction for the trainer/generator mismatch (verl's rollout correction, TRL's
    vLLM importance sampling), on the detached ratio pi_trainer / pi_behaviour.

    mode none: the clipped surrogate alone. mask: tokens (level token) or whole sequences (level
    sequence, by the geometric mean of their ratios) outside [low, high] contribute nothing.
    truncate: the policy gradient weighted by min(ratio, high) (the sequence's product of ratios
    at level sequence) in place of PPO's ratio: truncated importance sampling."""

    mode: str = "none"  # none | mask | truncate
    level: str = "token"  # token | sequence
    low: float = 0.0
    high: float = float("inf")


def correction_weights(log_ratio: torch.Tensor, seq_index: torch.Tensor, n_seqs: int,
                       c: Correction) -> torch.Tensor:
    """Per-token weight [M] (detached) of the rollout correction ``c``."""
    lr = log_ratio.detach()
    if c.mode == "none":
        return torch.ones_like(lr)
    if c.level == "sequence":
        total = segment_sum(lr, seq_index, n_seqs)
        if c.mode == "mask":
            count = segment_sum(torch.ones_like(lr), seq_index, n_seqs).clamp_min(1.0)
            lr = (total / count)[seq_index]  # log of the geometric mean ratio
        else:
            lr = total[seq_index]  # log of the sequence's importance weight
    ratio = torch.exp(lr)
    if c.mode == "mask":
        return ((ratio >= c.low) & (ratio <= c.high)).float()
    if c.mode == "truncate":
        return torch.clamp(ratio, max=c.high)
    raise ValueError(f"unknown correction mode {c.mode!r}")


@dataclass
class LossInputs:
    """Flat over the M scored response tokens of a micro-batch (no padding)."""

    logp: torch.Tensor  # [M] trainer log-probs, with grad
    entropy: torch.Tensor  # [M] full-vocabulary entropy, with grad
    behaviour_logp: torch.Tensor  # [M] from the generator
    advantages: torch.Tensor  # [M] each token carries its sequence's advantage
    seq_index: torch.Tensor  # [M] sequence of each token (0..n_seqs-1)
    n_seqs: int
    anchor_logp: torch.Tensor | None = None  # [M] under the anchor; needed for the k3 term


@dataclass
class LossSettings:
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float = 3.0
    entropy_coef: float = 0.0
    kl_loss_coef: float = 0.0
    correction: Correction = field(default_factory=Correction)


def t1_policy_loss(inp: LossInputs, s: LossSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss - alpha * entropy (+ beta * k3 KL to the anchor when the KL
    is a loss term rather than folded into the reward), SUMMED over the tokens: the caller
    divides by the batch's token count (a token-level mean over the global batch, however it
    is split). The statistics are token sums too."""
    log_ratio = inp.logp - inp.behaviour_logp
    weight = correction_weights(log_ratio, inp.seq_index, inp.n_seqs, s.correction)
    if s.correction.mode == "truncate":
        # the importance weight is the truncated one, not PPO's ratio: -w * A * grad(logp)
        pg = -weight * inp.advantages * torch.exp(inp.logp - inp.logp.detach())
        clip_hit = dual_hit = torch.zeros_like(pg)
    else:
        pg, clip_hit, dual_hit = clipped_surrogate(inp.logp, inp.behaviour_logp, inp.advantages,
                                                   s.eps_low, s.eps_high, s.dual_clip)
        pg = pg * weight
    per_token = pg - s.entropy_coef * inp.entropy
    kl = None
    if inp.anchor_logp is not None:
        kl = kl_k3(inp.logp, inp.anchor_logp)
        if s.kl_loss_coef:
            per_token = per_token + s.kl_loss_coef * kl
    with torch.no_grad():
        lr = log_ratio.detach()
        ratio = torch.exp(lr)
        sums = {
            "pg_loss": pg.sum().item(),
            "entropy": inp.entropy.sum().item(),
            "clip_frac": clip_hit.sum().item(),
            "dual_clip_frac": dual_hit.sum().item(),
            "ratio_dev": lr.abs().sum().item(),
            "is_weight_mean": ratio.sum().item(),
            # KL(behaviour || trainer) on the behaviour's samples: k1 and the non-negative k3
            "mismatch_kl_k1": (-lr).sum().item(),
            "mismatch_kl_k3": (ratio - lr - 1.0).sum().item(),
            "masked_frac": (weight == 0).float().sum().item() if s.correction.mode == "mask" else 0.0,
            "correction_weight_mean": weight.sum().item(),
            "kl_anchor": kl.detach().sum().item() if kl is not None else 0.0,
        }
    return per_token.sum(), sums


def ratio_quantiles(log_ratio: torch.Tensor, qs=(0.01, 0.5, 0.99)) -> dict[str, float]:
    """Quantiles, min and max of the importance ratio over a step's tokens (for the step log)."""
    r = torch.exp(log_ratio.detach().float().flatten())
    if r.numel() == 0:
        return {}
    if r.numel() > 1 << 24:  # torch.quantile's input limit: a strided sample is plenty
        r = r[:: r.numel() // (1 << 23) + 1]
    out = {f"ratio_p{round(q * 100):02d}": v for q, v in zip(qs, torch.quantile(r, torch.tensor(qs, dtype=r.dtype, device=r.device)).tolist())}
    return {**out, "ratio_min": r.min().item(), "ratio_max": r.max().item()}


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
