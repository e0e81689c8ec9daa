import math

import pytest
import torch

from services.trainer.objective import (
    LossInputs,
    clipped_surrogate,
    masked_mean,
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
    behaviour = torch.zeros(1, 2)
    logp = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    loss, clipped = clipped_surrogate(logp, behaviour, torch.tensor([1.0]), eps_low=0.2, eps_high=0.28)
    loss.sum().backward()
    assert clipped.tolist() == [[1.0, 0.0]]
    assert logp.grad[0, 0] == 0  # ratio 1.5 > 1.28 with A>0: clipped
    assert logp.grad[0, 1] == pytest.approx(-1.1)  # d(-ratio*A)/dlogp = -ratio


def test_token_level_mean_weights_every_token_equally():
    x = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(7 / 4)


def test_policy_gradient_raises_logprob_of_positive_advantage_samples():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, requires_grad=True)
    ids = torch.randint(0, 6, (2, 4))
    with torch.no_grad():
        behaviour, _ = token_logprobs_and_entropy(logits, ids)
    inp = LossInputs(logits, ids, torch.ones(2, 4), behaviour, torch.tensor([1.0, -1.0]))
    loss, stats = t1_policy_loss(inp, 1.0, 0.2, 0.28, entropy_coef=0.0)
    assert stats["ratio_dev"] == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    with torch.no_grad():
        after, _ = token_logprobs_and_entropy(logits - 0.5 * logits.grad, ids)
    assert after[0].sum() > behaviour[0].sum()
    assert after[1].sum() < behaviour[1].sum()


def test_entropy_bonus_pushes_entropy_up():
    logits = torch.tensor([[[3.0, 0.0, 0.0]]], requires_grad=True)
    ids = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        behaviour, ent0 = token_logprobs_and_entropy(logits, ids)
    inp = LossInputs(logits, ids, torch.ones(1, 1), behaviour, torch.zeros(1))
    loss, _ = t1_policy_loss(inp, 1.0, 0.2, 0.2, entropy_coef=1.0)
    loss.backward()
    _, ent1 = token_logprobs_and_entropy(logits.detach() - 0.1 * logits.grad, ids)
    assert ent1.item() > ent0.item()


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
    anchor_logits = torch.tensor([[[0.0, 0.0, 0.0]]])
    logits = torch.tensor([[[2.0, 0.0, -1.0]]], requires_grad=True)
    ids = torch.zeros(1, 1, dtype=torch.long)
    anchor_logp, _ = token_logprobs_and_entropy(anchor_logits, ids)
    with torch.no_grad():
        behaviour, _ = token_logprobs_and_entropy(logits, ids)
    inp = LossInputs(logits, ids, torch.ones(1, 1), behaviour, torch.zeros(1), anchor_logp)
    loss, stats = t1_policy_loss(inp, 1.0, 0.2, 0.2, entropy_coef=0.0, kl_loss_coef=1.0)
    assert stats["kl_anchor"] > 0
    loss.backward()
    moved = logits.detach() - 0.5 * logits.grad
    new_logp, _ = token_logprobs_and_entropy(moved, ids)
    # the sampled token was over-weighted relative to the anchor: the step lowers it
    assert new_logp.item() < behaviour.item() and new_logp.item() > anchor_logp.item()


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
