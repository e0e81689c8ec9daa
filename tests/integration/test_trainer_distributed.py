"""Two real gloo ranks (ZeRO-2 and ZeRO-3) against one rank, on the same fixed scored batch.

The two-rank trainer must publish the same weights as the one-rank trainer (the loss is the
token-level mean over the global batch, however the groups are sharded), hold identical full
parameters on both ranks, publish every parameter at full shape, resume from its collective
checkpoint, and leave every Redis write to rank 0.

This file is also the per-rank worker: ``python test_trainer_distributed.py SPEC.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import scored_group, scorer, take_prompts  # noqa: F401  (scorer: a fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common import streams
from services.common.config import load_config
from services.common.ledger import Ledger
from services.common.net import free_port
from services.data.task_source import TaskSource
from services.trainer.feeder import Feeder

ROOT = Path(__file__).resolve().parents[2]
GROUPS, STEPS = 3, 2  # 3 groups on 2 ranks: an uneven shard, so the global token mean matters
# ema anchor rotated every step + a k3 loss term: step 2 depends on the (ZeRO-3 gathered) anchor
# AdamW with eps=1 updates by ~lr * gradient (its eps=1e-8 default makes a near sign-step, which
# hides a wrong gradient scale and turns float noise in near-zero gradients into lr-sized moves)
OVERRIDES = [f"trainer.groups_per_step={GROUPS}", "trainer.lr=0.1", "trainer.adam_eps=1.0",
             "trainer.anchor_mode=ema", "trainer.anchor_interval=1", "trainer.anchor_ema_decay=0.5",
             "trainer.kl_mode=loss", "trainer.kl_coef=0.1", "trainer.drop_zero_variance=false",
             "trainer.tensorboard=false"]


def config(run_dir, model_dir, redis_url, prefix, *extra):
    return load_config("quick", [f"run_dir={run_dir}", f"model.path={model_dir}",
                                 f"redis.url={redis_url}", f"redis.prefix={prefix}",
                                 f"trainer.port={free_port()}", *OVERRIDES, *extra], environ={})


def publish_fixed_batch(s, cfg, tok, model, grader, n=GROUPS * STEPS):
    """n prompts admitted and scored (behaviour log-probs of the base model): the same bytes
    under any prefix, since prompts and samples are deterministic in the prompt index."""
    Feeder(s, Ledger(s), TaskSource(cfg.task), n).top_up(0)
    for i, p in enumerate(take_prompts(s, n)):
        s.publish(streams.SCORED, scored_group(p, tok, model, grader, n_correct=1 + i % 3))


def published(run_dir, version):
    return load_file(str(Path(run_dir) / "weights" / f"v{version:06d}" / "model.safetensors"))


def full_state(trainer) -> dict[str, torch.Tensor]:
    from services.trainer.dist import full_params

    with full_params(trainer.engine):
        policy = {k: v.detach().clone() for k, v in trainer.engine.module.lm.named_parameters()}
    anchor = {f"anchor.{k}": v.detach().clone() for k, v in trainer.anchor.model.named_parameters()}
    return {**policy, **anchor}


def assert_close(a: dict, b: dict, rtol=1e-5, atol=1e-7):
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, redis_server, scorer):  # noqa: F811
    """The one-rank run (this process, ZeRO-2) on the fixed batch: published weights per step."""
    from services.trainer.rl import RLTrainer

    run_dir = tmp_path_factory.mktemp("one-rank")
    s = streams.Streams(streams.connect(redis_server.url), prefix=f"test-one-rank-{uuid.uuid4().hex[:8]}")
    cfg = config(run_dir, tiny_model_dir, redis_server.url, s.prefix, "trainer.zero_stage=2")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    publish_fixed_batch(s, cfg, tok, model, scorer)
    trainer = RLTrainer(cfg, s, "trainer-one")
    records = []
    while trainer.version < STEPS:
        rec = trainer.run_once()
        if rec:
            records.append(rec)
    return {v: published(run_dir, v) for v in range(1, STEPS + 1)}, records


class Listener:
    """A member of the trainer's weight broadcast without an engine: it receives each version
    it is offered and keeps the tensors, to compare with the version's files."""

    def __init__(self, s, name="listener"):
        import threading

        from services.common import weight_broadcast as wb

        self.s, self.name, self.wb = s, name, wb
        self.got: dict[int, dict[str, torch.Tensor]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def beat(self):
        import time

        self.wb.register(self.s, self.name, self.wb.Member(ranks=1, backend="gloo", dtype="float32",
                                                           seen=time.time()))

    def run(self):
        import time

        from services.common import weights

        last_beat = 0.0
        while not self.stop.is_set():
            if time.monotonic() - last_beat > 2:
                self.beat()
                last_beat = time.monotonic()
            ann = weights.latest(self.s)
            if ann and ann.version not in self.got and ann.broadcast and self.name in ann.broadcast.ranks:
                pg = self.wb.open_group(ann.broadcast, ann.broadcast.ranks[self.name])
                got = {k: v.clone() for k, v in self.wb.receive(pg, ann.broadcast, torch.device("cpu"))}
                self.got[ann.version] = got
                self.wb.close_group(pg)
            time.sleep(0.05)


# ZeRO-3 also splits each rank's shard into one micro-batch per sequence: the ranks' sequences
# (balanced by tokens, not by count) may differ in number, and the rank with fewer makes
# zero-weight passes to match ZeRO-3's collectives
@pytest.mark.parametrize("stage,micro_batch_tokens", [(2, 0), (3, 1)])
def test_two_ranks_publish_what_one_rank_publishes(stage, micro_batch_tokens, reference, tmp_path,
                                                   tiny_model_dir, redis_server, scorer):  # noqa: F811
    ref_weights, ref_records = reference
    s = streams.Streams(streams.connect(redis_server.url), prefix=f"test-two-ranks-{uuid.uuid4().hex[:8]}")
    run_dir = tmp_path / "run"
    # threshold 0: ZeRO-3 really partitions this tiny model's parameters (by default it keeps
    # every tensor under 100k elements whole on each rank)
    extra = [f"trainer.zero_stage={stage}", "trainer.zero3_param_persistence_threshold=0",
             f"trainer.micro_batch_tokens={micro_batch_tokens}",
             "trainer.weight_broadcast=true", f"trainer.broadcast_port={free_port()}"]
    cfg = config(run_dir, tiny_model_dir, redis_server.url, s.prefix, *extra)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    publish_fixed_batch(s, cfg, tok, model, scorer)

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"run_dir": str(run_dir), "model": str(tiny_model_dir),
                                "redis_url": redis_server.url, "prefix": s.prefix, "extra": extra,
                                "out": str(tmp_path)}))
    listener = Listener(s)
    listener.beat()
    listener.thread.start()
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "PYTHONPATH": str(ROOT)}
        with open(tmp_path / f"rank{rank}.log", "wb") as log:
            procs.append(subprocess.Popen([sys.executable, __file__, str(spec)], cwd=ROOT, env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        listener.stop.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = "\n".join((tmp_path / f"rank{r}.log").read_text()[-3000:] for r in range(2))
    assert codes == [0, 0], logs

    # the same updates as one rank, step by step, every parameter at full shape; and rank 0
    # broadcast each committed version (gathered again under ZeRO-3) bit for bit as published
    listener.thread.join(10)
    assert sorted(listener.got) == list(range(1, STEPS + 1))
    for v in range(1, STEPS + 1):
        assert_close(published(run_dir, v), ref_weights[v])
        assert_close(listener.got[v], published(run_dir, v), rtol=0, atol=0)
    records = [json.loads(r) for r in s.r.lrange(s.key("trainer:steps"), 0, -1)]
    assert [r["world_size"] for r in records] == [2] * STEPS
    for r in records:  # 12 sequences on 2 ranks: at least 6 passes each when split per sequence
        assert r["micro_batches"] >= 6 if micro_batch_tokens else r["micro_batches"] == 1
    for r, ref in zip(records, ref_records):
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-7)
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)  # scale-sensitive
        assert r["tokens"] == ref["tokens"]
    # both ranks hold the same full parameters, equal to the last published version, and a
    # resumed trainer (collective checkpoint load on both ranks) brings them back
    states = [torch.load(tmp_path / f"state-rank{r}.pt") for r in range(2)]
    resumed = [torch.load(tmp_path / f"resumed-rank{r}.pt") for r in range(2)]
    assert_close(states[0], states[1], rtol=0, atol=0)
    policy = {k: t for k, t in states[0].items() if not k.startswith("anchor.")}
    assert_close(policy, published(run_dir, STEPS), rtol=0, atol=0)
    for r in range(2):
        assert_close(resumed[r], states[r], rtol=0, atol=0)
    # the probe was computed by both ranks together (a collective forward under ZeRO-3) and is
    # the published weights' own
    from services.common import weights
    from services.common.weight_probe import max_difference, probe_logprobs

    ann = weights.latest(s)
    final = AutoModelForCausalLM.from_pretrained(ann.uri, dtype=torch.float32)
    assert max_difference(ann.probe.logprobs, probe_logprobs(final, ann.probe.token_ids)) < 1e-5
    # rank 0 alone wrote Redis: one announcement and one step record per step, each group once
    assert s.length(streams.WEIGHTS) == STEPS and len(records) == STEPS
    counts = Ledger(s).counts()
    assert counts["trained"] == GROUPS * STEPS and Ledger(s).audit()["trained"] == GROUPS * STEPS


def worker(spec_path: str) -> None:
    """One rank: train STEPS steps, dump the full state, then resume from the checkpoint."""
    from services.trainer import dist
    from services.trainer.rl import RLTrainer

    spec = json.loads(Path(spec_path).read_text())
    cfg = config(spec["run_dir"], spec["model"], spec["redis_url"], spec["prefix"], *spec["extra"])
    # every rank gets a connection, so a write from a non-zero rank would show in the counts
    s = streams.Streams(streams.connect(spec["redis_url"]), prefix=spec["prefix"])
    trainer = RLTrainer(cfg, s, "trainer-dist")
    while trainer.version < STEPS:
        trainer.run_once()
    out = Path(spec["out"])
    torch.save(full_state(trainer), out / f"state-rank{dist.rank()}.pt")
    if dist.is_main():
        trainer.publication.close()  # its broadcast store's port, for the resumed trainer
    resumed = RLTrainer(cfg, s, "trainer-dist")
    assert resumed.version == STEPS
    torch.save(full_state(resumed), out / f"resumed-rank{dist.rank()}.pt")
    dist.barrier()


if __name__ == "__main__":
    worker(sys.argv[1])
