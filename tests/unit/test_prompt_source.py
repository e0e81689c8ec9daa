"""The prompt-source seam: dataset files reshuffled per epoch, the procedural task, and the
feeder's cursor over either (on a real Redis)."""

import json

import pytest

from services.common import streams
from services.common.config import T1Config, load_config
from services.common.ledger import Ledger
from services.common.schemas import Prompt
from services.data.file_source import FileSource
from services.data.prompt_source import first, prompt_source
from services.data.task_source import TaskSource
from services.trainer.feeder import Feeder, SourceChanged


def math_file(path, n, offset=0):
    path.write_text("".join(json.dumps({"problem": f"{i}+{offset}", "solution": f"so \\boxed{{{i + offset}}}"})
                            + "\n" for i in range(n)))
    return path


def test_each_epoch_visits_every_record_once_in_its_own_seeded_order(tmp_path):
    src = FileSource(math_file(tmp_path / "m.jsonl", 50), seed=3)
    epochs = [[src.problem(e * 50 + i).index for i in range(50)] for e in range(3)]
    assert all(sorted(order) == list(range(50)) for order in epochs)
    assert len({tuple(order) for order in epochs}) == 3  # reshuffled every epoch
    assert epochs[0] != list(range(50))
    again = FileSource(tmp_path / "m.jsonl", seed=3)  # another process: the same stream
    assert [again.problem(i).index for i in range(150)] == [i for order in epochs for i in order]
    other = FileSource(tmp_path / "m.jsonl", seed=4)
    assert [other.problem(i).index for i in range(50)] != epochs[0]
    p = src.problem(0)
    assert p.prompt == f"Q:{p.index}+0\nA:" and p.gold == str(p.index)


def test_identity_follows_the_content_and_the_seed(tmp_path):
    a = FileSource(math_file(tmp_path / "a.jsonl", 20), seed=0).identity()
    assert FileSource(tmp_path / "a.jsonl", seed=0).identity() == a
    assert FileSource(tmp_path / "a.jsonl", seed=1).identity() != a
    math_file(tmp_path / "a.jsonl", 20, offset=1)  # same size, other problems
    assert FileSource(tmp_path / "a.jsonl", seed=0).identity()["digest"] != a["digest"]


def test_the_config_picks_the_source_for_each_use(tmp_path):
    cfg = T1Config()
    assert isinstance(prompt_source(cfg, "train"), TaskSource)
    held, val = first(prompt_source(cfg, "eval"), 5), first(prompt_source(cfg, "validation"), 5)
    assert held[0].source == "task:addition:heldout" and val[0].index == 1_000_000
    assert {p.prompt for p in held}.isdisjoint({p.prompt for p in val})
    f = math_file(tmp_path / "e.jsonl", 7)
    cfg = load_config(None, [f"data.train={f}", f"data.eval={f}"], environ={})
    train, evaluation = prompt_source(cfg, "train"), prompt_source(cfg, "eval")
    assert isinstance(train, FileSource) and train.size == 7
    assert [p.index for p in first(evaluation, None)] == list(range(7))  # file order, all of it
    assert len(first(evaluation, 3)) == 3 and len(first(evaluation, 100)) == 7
    with pytest.raises(ValueError, match="endless"):
        first(TaskSource(cfg.task), None)


def test_epochs_need_a_dataset():
    with pytest.raises(ValueError, match="data.epochs counts passes over data.train"):
        load_config(None, ["data.epochs=2"], environ={})


def test_a_record_without_gold_fails_at_load_with_file_and_record(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "1+1", "solution": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: record 1: the solution has no complete \\boxed"):
        FileSource(path)


def drain(s, ledger, n) -> list[Prompt]:
    """Take n prompts off the stream and mark them trained, freeing room in flight."""
    c = streams.Consumer(s, streams.PROMPTS, "generator", "g", Prompt)
    entries = c.read(n, block_ms=100)
    pipe = s.transaction()
    c.ack([e.id for e in entries], pipe)
    for e in entries:
        ledger.mark_trained(pipe, e.msg.prompt_id, 1, 1)
    pipe.execute()
    return [e.msg for e in entries]


def test_the_feeder_resumes_its_cursor_and_stops_after_the_epochs(s, tmp_path):
    src = FileSource(math_file(tmp_path / "m.jsonl", 5), seed=1)
    ledger = Ledger(s)
    feeder = Feeder(s, ledger, src, max_in_flight=3, epochs=2)
    assert feeder.top_up(0) == 3
    seen = drain(s, ledger, 3)
    # a restarted trainer: a new feeder over the same Redis carries on from the cursor
    feeder = Feeder(s, ledger, FileSource(tmp_path / "m.jsonl", seed=1), max_in_flight=3, epochs=2)
    assert feeder.cursor == 3
    while not feeder.exhausted:
        feeder.top_up(1)
        seen += drain(s, ledger, 3)
    assert feeder.top_up(2) == 0 and feeder.epoch == 2.0
    origins = [p.origin for p in seen]
    assert [p.index for p in seen] == list(range(10))
    for epoch in (origins[:5], origins[5:]):  # each epoch: every record exactly once
        assert sorted(epoch) == [f"m.jsonl#{i}" for i in range(5)]
    assert all(p.gold == p.text[2:-3].split("+")[0] for p in seen)  # "Q:i+0\nA:" has gold i


def test_the_feeder_refuses_to_continue_a_cursor_over_other_data(s, tmp_path):
    ledger = Ledger(s)
    feeder = Feeder(s, ledger, FileSource(math_file(tmp_path / "a.jsonl", 5)), max_in_flight=2)
    feeder.top_up(0)
    with pytest.raises(SourceChanged, match=r"prompt cursor \(2\) counts in another prompt source"):
        Feeder(s, ledger, FileSource(math_file(tmp_path / "b.jsonl", 6)), max_in_flight=2)
    Feeder(s, ledger, FileSource(tmp_path / "a.jsonl"), max_in_flight=2)  # the same data is fine


def test_status_shows_the_epoch_and_the_position_in_it():
    from services.cli import source_summary

    ident = {"kind": "file", "name": "m.jsonl", "size": 10}
    assert source_summary(ident, 0) == "m.jsonl: epoch 1, 0/10 records (0 enqueued)"
    assert source_summary(ident, 13) == "m.jsonl: epoch 2, 3/10 records (13 enqueued)"
    assert source_summary(ident, 20) == "m.jsonl: epoch 2, 10/10 records (20 enqueued)"
    assert source_summary({"kind": "task", "name": "linear", "size": None}, 7) == "task linear: 7 enqueued"
