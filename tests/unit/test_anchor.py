import torch

from services.trainer.anchor import Anchor


def _pair():
    torch.manual_seed(0)
    policy = torch.nn.Linear(3, 2)
    anchor_model = torch.nn.Linear(3, 2)
    anchor_model.load_state_dict(policy.state_dict())
    return policy, anchor_model


def test_hard_rotation_happens_exactly_at_the_interval():
    policy, anchor_model = _pair()
    anchor = Anchor(anchor_model, interval=3)
    for version in (1, 2):
        with torch.no_grad():
            policy.weight.add_(1.0)
        assert anchor.maybe_rotate(policy, version) is False
        assert not torch.equal(anchor.model.weight, policy.weight)  # still the old reference
    with torch.no_grad():
        policy.weight.add_(1.0)
    assert anchor.maybe_rotate(policy, 3) is True
    assert torch.equal(anchor.model.weight, policy.weight) and anchor.version == 3
    assert not anchor.model.weight.requires_grad


def test_ema_rotation_blends():
    policy, anchor_model = _pair()
    before = anchor_model.weight.detach().clone()
    with torch.no_grad():
        policy.weight.add_(1.0)
    anchor = Anchor(anchor_model, interval=1, mode="ema", ema_decay=0.75)
    anchor.maybe_rotate(policy, 1)
    assert torch.allclose(anchor.model.weight, 0.75 * before + 0.25 * policy.weight)


def test_state_roundtrip():
    policy, anchor_model = _pair()
    a = Anchor(anchor_model, interval=2, version=4)
    other = Anchor(torch.nn.Linear(3, 2), interval=2)
    other.load_state_dict(a.state_dict())
    assert other.version == 4 and torch.equal(other.model.weight, a.model.weight)


def test_python_rng_state_survives_json_both_forms():
    """The checkpoint keeps random.getstate() as JSON lists; older checkpoints kept its repr."""
    import json
    import random

    from services.trainer.checkpoint import _python_rng

    random.seed(11)
    random.gauss(0, 1)  # a pending gauss_next makes the third field a float
    state = random.getstate()
    expected = [random.random() for _ in range(3)]
    for saved in (json.loads(json.dumps(state)), repr(state)):
        random.setstate(_python_rng(saved))
        assert [random.random() for _ in range(3)] == expected
