import math

import pytest
import torch

from services.trainer.objective import (
    LossInputs,
    clipped_surrogate,
    Correction,
    LossSettings,
    correction_weights,
    ratio_quantiles,
    rloo_advantages,
    t1_policy_loss,
    token_logprobs_and_entropy,
)


def test_rloo_is_reward_minus_mean_of_the_others():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    a = rloo_advantages(r)
    assert torch.allclose(a[0], torch.tensor([1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3]))
    assert torch.all(a[1] == 0)  # zero variance: no signal
    assert torch.allclose(a.sum(-1), torch.zeros(2), atol=1e-6)


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(3, 1))


def test_logprobs_and_entropy_match_definitions():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    targets = torch.randint(0, 5, (2, 3))
    logp, ent = token_logprobs_and_entropy(logits, targets, temperature=2.0)
    p = torch.softmax(logits / 2.0, -1)
    assert torch.allclose(logp, torch.log(p.gather(-1, targets[..., None]).squeeze(-1)), atol=1e-6)
    assert torch.allclose(ent, -(p * p.log()).sum(-1), atol=1e-6)
    _, ent_uniform = token_logprobs_and_entropy(torch.zeros(1, 1, 7), torch.zeros(1, 1, dtype=torch.long))
    assert ent_uniform.item() == pytest.approx(math.log(7))


def test_clipping_stops_the_gradient_outside_the_trust_region():
    behaviour = torch.zeros(2)
    logp = torch.tensor([math.log(1.5), math.log(1.1)], requires_grad=True)
    loss, clipped, dual = clipped_surrogate(logp, behaviour, torch.tensor([1.0, 1.0]), eps_low=0.2, eps_high=0.28)
    loss.sum().backward()
    assert clipped.tolist() == [1.0, 0.0] and dual.tolist() == [0.0, 0.0]
    assert logp.grad[0] == 0  # ratio 1.5 > 1.28 with A>0: clipped
    assert logp.grad[1] == pytest.approx(-1.1)  # d(-ratio*A)/dlogp = -ratio


def test_dual_clip_caps_the_loss_of_exploded_ratios_with_negative_advantages():
    behaviour = torch.zeros(3)
    logp = torch.tensor([math.log(5.0), math.log(2.0), math.log(5.0)], requires_grad=True)
    adv = torch.tensor([-1.0, -1.0, 1.0])
    plain, _, _ = clipped_surrogate(logp, behaviour, adv, 0.2, 0.28, dual_clip=0.0)
    assert plain[0].item() == pytest.approx(5.0)  # unbounded without the dual clip
    loss, clipped, dual = clipped_surrogate(logp, behaviour, adv, 0.2, 0.28, dual_clip=3.0)
    assert loss.tolist() == pytest.approx([3.0, 2.0, -1.28])  # capped at -c*A; 2 < 3 stays
    assert dual.tolist() == [1.0, 0.0, 0.0]
    loss.sum().backward()
    assert logp.grad[0] == 0 and logp.grad[1] == pytest.approx(2.0) and logp.grad[2] == 0


def loss_inputs(logits, ids, adv, anchor_logp=None, seq_index=None, behaviour=None):
    """Flat inputs from [M, V] logits (a leaf with grad): one sequence per token by default."""
    logp, ent = token_logprobs_and_entropy(logits, ids)
    if behaviour is None:
        behaviour = logp.detach()
    seq_index = torch.arange(len(ids)) if seq_index is None else seq_index
    return LossInputs(logp, ent, behaviour, adv, seq_index, int(seq_index.max()) + 1, anchor_logp)


def test_loss_is_a_token_sum_and_its_statistics_token_sums():
    logits = torch.zeros(3, 4, requires_grad=True)
    ids = torch.tensor([0, 1, 2])
    loss, stats = t1_policy_loss(loss_inputs(logits, ids, torch.tensor([1.0, 1.0, -2.0])), LossSettings())
    assert loss.item() == pytest.approx(-(1 + 1 - 2))  # ratio 1: -sum(A)
    assert stats["entropy"] == pytest.approx(3 * math.log(4), rel=1e-6)


def test_policy_gradient_raises_logprob_of_positive_advantage_samples():
    torch.manual_seed(0)
    logits = torch.randn(8, 6, requires_grad=True)
    ids = torch.randint(0, 6, (8,))
    adv = torch.tensor([1.0] * 4 + [-1.0] * 4)
    inp = loss_inputs(logits, ids, adv, seq_index=torch.tensor([0] * 4 + [1] * 4))
    loss, stats = t1_policy_loss(inp, LossSettings())
    assert stats["ratio_dev"] == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    with torch.no_grad():
        after, _ = token_logprobs_and_entropy(logits - 0.5 * logits.grad, ids)
    assert after[:4].sum() > inp.behaviour_logp[:4].sum()
    assert after[4:].sum() < inp.behaviour_logp[4:].sum()


def test_entropy_bonus_pushes_entropy_up():
    logits = torch.tensor([[3.0, 0.0, 0.0]], requires_grad=True)
    ids = torch.zeros(1, dtype=torch.long)
    inp = loss_inputs(logits, ids, torch.zeros(1))
    ent0 = inp.entropy.item()
    loss, _ = t1_policy_loss(inp, LossSettings(entropy_coef=1.0))
    loss.backward()
    _, ent1 = token_logprobs_and_entropy(logits.detach() - 0.1 * logits.grad, ids)
    assert ent1.item() > ent0


def test_correction_masks_tokens_or_sequences_outside_the_ratio_bounds():
    # hand-made log-ratios: seq 0 = tokens 0-2 (ratios 1, 4, 1), seq 1 = tokens 3-4 (1.2, 0.9)
    log_ratio = torch.log(torch.tensor([1.0, 4.0, 1.0, 1.2, 0.9]))
    seq = torch.tensor([0, 0, 0, 1, 1])
    tok = correction_weights(log_ratio, seq, 2, Correction("mask", "token", 0.5, 2.0))
    assert tok.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]
    # sequence level: seq 0's geometric mean ratio is 4**(1/3) = 1.59 (kept at high=2, masked at 1.5)
    assert correction_weights(log_ratio, seq, 2, Correction("mask", "sequence", 0.5, 2.0)).tolist() == [1.0] * 5
    assert correction_weights(log_ratio, seq, 2, Correction("mask", "sequence", 0.5, 1.5)).tolist() == [0, 0, 0, 1, 1]
    trunc = correction_weights(log_ratio, seq, 2, Correction("truncate", "token", high=2.0))
    assert trunc.tolist() == pytest.approx([1.0, 2.0, 1.0, 1.2, 0.9])
    seq_trunc = correction_weights(log_ratio, seq, 2, Correction("truncate", "sequence", high=2.0))
    assert seq_trunc.tolist() == pytest.approx([2.0, 2.0, 2.0, 1.08, 1.08])  # products 4 -> 2, 1.08


def test_masked_tokens_carry_no_gradient_and_are_counted():
    logits = torch.zeros(3, 4, requires_grad=True)
    ids = torch.tensor([0, 1, 2])
    behaviour = torch.log(torch.tensor([0.25, 0.25 / 3.0, 0.25]))  # token 1: ratio 3
    inp = loss_inputs(logits, ids, torch.ones(3), behaviour=behaviour)
    loss, stats = t1_policy_loss(inp, LossSettings(correction=Correction("mask", "token", 0.5, 2.0)))
    loss.backward()
    assert stats["masked_frac"] == 1.0  # a token sum: one of three tokens
    assert torch.all(logits.grad[1] == 0) and torch.any(logits.grad[0] != 0)
    assert stats["mismatch_kl_k3"] == pytest.approx(3 - math.log(3) - 1, rel=1e-5)


def test_truncated_importance_sampling_weights_the_gradient_by_the_capped_ratio():
    logits = torch.zeros(2, 4, requires_grad=True)
    ids = torch.tensor([0, 0])
    behaviour = torch.log(torch.tensor([0.25 / 5.0, 0.25 / 1.5]))  # ratios 5 and 1.5
    inp = loss_inputs(logits, ids, torch.ones(2), behaviour=behaviour)
    loss, _ = t1_policy_loss(inp, LossSettings(correction=Correction("truncate", "token", high=2.0)))
    assert loss.item() == pytest.approx(-(2.0 + 1.5))
    loss.backward()
    # d(-w * A * logp)/d logit_0 = -w * (1 - p_0): proportional to the capped weights 2 : 1.5
    assert (logits.grad[0, 0] / logits.grad[1, 0]).item() == pytest.approx(2.0 / 1.5)


def test_ratio_quantiles():
    q = ratio_quantiles(torch.log(torch.linspace(0.5, 1.5, 101)))
    assert q["ratio_p50"] == pytest.approx(1.0) and q["ratio_min"] == pytest.approx(0.5)
    assert q["ratio_max"] == pytest.approx(1.5) and 0.5 < q["ratio_p01"] < q["ratio_p99"] < 1.5


# -- KL to the anchor ---------------------------------------------------------------------------
from services.trainer.objective import kl_k1, kl_k3, kl_shaped_rewards, select_samples  # noqa: E402


def test_kl_estimators_hand_computed():
    logp = torch.tensor([math.log(0.5), math.log(0.25)])
    anchor = torch.tensor([math.log(0.25), math.log(0.25)])
    assert torch.allclose(kl_k1(logp, anchor), torch.tensor([math.log(2.0), 0.0]))
    # k3 = exp(a-p) - (a-p) - 1 = 0.5 + log 2 - 1 for the first token, 0 for the second
    assert torch.allclose(kl_k3(logp, anchor), torch.tensor([0.5 + math.log(2.0) - 1.0, 0.0]), atol=1e-6)
    assert torch.all(kl_k3(torch.randn(100), torch.randn(100)) >= 0)


def test_kl_loss_term_pulls_the_policy_towards_the_anchor():
    anchor_logits = torch.tensor([[0.0, 0.0, 0.0]])
    logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    ids = torch.zeros(1, dtype=torch.long)
    anchor_logp, _ = token_logprobs_and_entropy(anchor_logits, ids)
    inp = loss_inputs(logits, ids, torch.zeros(1), anchor_logp=anchor_logp)
    loss, stats = t1_policy_loss(inp, LossSettings(kl_loss_coef=1.0))
    assert stats["kl_anchor"] > 0
    loss.backward()
    moved = logits.detach() - 0.5 * logits.grad
    new_logp, _ = token_logprobs_and_entropy(moved, ids)
    # the sampled token was over-weighted relative to the anchor: the step lowers it
    assert new_logp.item() < inp.behaviour_logp.item() and new_logp.item() > anchor_logp.item()


def test_kl_in_the_reward_penalises_drifted_samples_within_the_group():
    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    seq_kl = torch.tensor([[0.0, 50.0, 0.0, 50.0]])
    shaped = kl_shaped_rewards(rewards, seq_kl, beta=0.01)
    assert torch.allclose(shaped, torch.tensor([[1.0, 0.5, 0.0, -0.5]]))
    adv = rloo_advantages(shaped)
    assert adv[0, 0] > adv[0, 1] and adv[0, 2] > adv[0, 3]  # same correctness, less drift wins


# -- oversampling keep rules --------------------------------------------------------------------
def test_keep_rules():
    r = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert select_samples(r, "all") == list(range(6))
    assert select_samples(r, "balanced") == [0, 1, 2, 3]
    kept = select_samples([0.0, 0.5, 1.0, 0.2, 0.9, 0.1], "max_variance", 4)
    assert kept == [0, 2, 4, 5]  # two lowest (0.0, 0.1) and two highest (0.9, 1.0)
    assert select_samples([1.0, 1.0], "balanced") == []
    with pytest.raises(ValueError):
        select_samples(r, "nope")


def test_pass_at_k_estimator():
    from services.evaluation import pass_at_k
    assert pass_at_k(8, 0, 1) == 0.0 and pass_at_k(8, 8, 8) == 1.0
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
