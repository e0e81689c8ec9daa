import msgspec
import pytest

from services.common import schemas
from services.common.schemas import Prompt, RolloutGroup, Sample, ScoredGroup, Verdict, WeightAnnouncement


def _group() -> RolloutGroup:
    p = Prompt(prompt_id="p1", index=1, text="Q:1+2\nA:", gold="3")
    s = Sample(text="\\boxed{3}", token_ids=[5, 6], logprobs=[-0.1, -0.2], finish_reason="stop")
    return RolloutGroup(prompt=p, prompt_token_ids=[1, 2], samples=[s, s], policy_version=4,
                        generator_id="g0", temperature=1.0, top_p=1.0)


@pytest.mark.parametrize("msg", [
    Prompt(prompt_id="p1", index=1, text="t", gold="3"),
    _group(),
    ScoredGroup(rollout=_group(), verdicts=[Verdict(correct=True, reward=1.0, extracted="3", status="ok")] * 2),
    WeightAnnouncement(version=2, uri="/w/v000002", sha256="ab" * 32, step=2),
])
def test_roundtrip_preserves_every_field(msg):
    assert schemas.decode(schemas.encode(msg)) == msg


def test_garbage_is_a_schema_error():
    with pytest.raises(schemas.SchemaError):
        schemas.decode(b"\x00not msgpack")


def test_wrong_kind_is_rejected():
    data = schemas.encode(Prompt(prompt_id="p", index=0, text="t", gold="1"))
    with pytest.raises(schemas.SchemaError, match="expected RolloutGroup"):
        schemas.decode(data, RolloutGroup)


def test_unknown_schema_version_is_rejected():
    data = msgspec.msgpack.encode(Prompt(prompt_id="p", index=0, text="t", gold="1", schema_version=99))
    with pytest.raises(schemas.SchemaError, match="schema_version"):
        schemas.decode(data)


def test_bad_finish_reason_fails_validation():
    raw = msgspec.msgpack.encode({"type": "rollout"})
    with pytest.raises(schemas.SchemaError):
        schemas.decode(raw)
