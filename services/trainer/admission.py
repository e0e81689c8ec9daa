"""Admission (rank 0): scored groups from Redis into the step's batch, or dropped with a reason.

Two batches are open at once: ``current``, which the next step trains on, and ``next``, filled
by a background thread while a step computes (``in_background``) and trained by the version
that step makes. A group leaves Redis's pending list only when the step that trained it
commits (``publication``) or when it is dropped here; a crash before either re-delivers it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field

import msgspec
from prometheus_client import Counter

from services.common import streams
from services.common.config import TrainerConfig
from services.common.ledger import Ledger
from services.common.schemas import ScoredGroup
from services.trainer.feeder import Feeder
from services.trainer.objective import select_samples

log = logging.getLogger(__name__)

DROPPED = Counter("t1_trainer_groups_dropped_total", "groups dropped", ["reason"])


@dataclass
class Batch:
    entry_ids: list[str] = field(default_factory=list)
    groups: list[ScoredGroup] = field(default_factory=list)  # only the kept samples
    offered: int = 0  # samples generated for these groups, before the keep rule
    unscored: int = 0  # samples left out because their check timed out or failed

    def prompt_ids(self) -> set[str]:
        return {g.rollout.prompt.prompt_id for g in self.groups}


def subset(g: ScoredGroup, keep: list[int]) -> ScoredGroup:
    if len(keep) == len(g.verdicts):
        return g
    rollout = msgspec.structs.replace(g.rollout, samples=[g.rollout.samples[i] for i in keep])
    return ScoredGroup(rollout=rollout, verdicts=[g.verdicts[i] for i in keep])


class Admission:
    def __init__(self, s: streams.Streams, ledger: Ledger, consumer: streams.Consumer,
                 feeder: Feeder, tc: TrainerConfig) -> None:
        self.s, self.ledger, self.consumer, self.feeder, self.tc = s, ledger, consumer, feeder, tc
        self.current = Batch()
        self.next = Batch()

    def full(self) -> bool:
        """A batch to train: ``groups_per_step`` groups, or, once the data has run out (the
        configured epochs), every group still in flight."""
        n = len(self.current.groups)
        return n >= self.tc.groups_per_step or (n > 0 and self.drained())

    def drained(self) -> bool:
        """The data has run out and every group still in flight is in the current batch."""
        return self.feeder.exhausted and self.ledger.in_flight() == len(self.current.groups)

    def fill(self, version: int) -> None:
        """Top the prompts up and read what the current batch still lacks (blocking briefly)."""
        self.feeder.top_up(version)
        need = self.tc.groups_per_step - len(self.current.groups)
        for entry in self.consumer.read(need) if need > 0 else []:
            self.admit(entry, version)

    def admit(self, entry: streams.Entry, version: int, into_next: bool = False) -> None:
        """Into the current batch (trained by ``version``), or the next one (trained by the
        version the running step makes), or dropped with a reason."""
        batch = self.next if into_next else self.current
        trained_by = version + into_next
        g: ScoredGroup = entry.msg
        pid = g.rollout.prompt.prompt_id
        if entry.id in self.current.entry_ids or entry.id in self.next.entry_ids:
            return  # re-read after a failed iteration: already in a batch, still pending
        status = self.ledger.status(pid)
        if status is None:
            self.consumer.dead_letter(entry.id, f"unknown prompt id {pid}")
            return
        if status != "enqueued" or pid in self.current.prompt_ids() | self.next.prompt_ids():
            # A redelivered duplicate (e.g. reclaimed from a slow consumer): already accounted.
            pipe = self.s.transaction()
            self.consumer.ack([entry.id], pipe)
            pipe.execute()
            log.warning("duplicate group %s (%s) acknowledged and skipped", pid, status)
            return
        offered = len(g.verdicts)
        scored = [i for i, v in enumerate(g.verdicts) if v.status == "ok"]
        if len(scored) < offered and len(scored) >= self.tc.min_scored_samples:
            # a sample whose check timed out or failed is left out, not the whole group
            g = subset(g, scored)
        rewards = [v.reward for v in g.verdicts]
        if trained_by - g.rollout.policy_version > self.tc.max_staleness:
            self._drop(entry.id, pid, "too_stale")
        elif len(scored) < offered and len(scored) < self.tc.min_scored_samples:
            self._drop(entry.id, pid, "verifier_error")
        elif self.tc.drop_zero_variance and max(rewards) == min(rewards):
            self._drop(entry.id, pid, "zero_variance")
        else:
            keep = select_samples(rewards, self.tc.keep_rule, self.tc.keep_size)
            if len(keep) < 2:
                self._drop(entry.id, pid, "too_few_kept")
                return
            batch.entry_ids.append(entry.id)
            batch.groups.append(subset(g, keep))
            batch.offered += offered
            batch.unscored += offered - len(scored)

    def _drop(self, entry_id: str, prompt_id: str, reason: str) -> None:
        pipe = self.s.transaction()
        self.ledger.mark_dropped(pipe, prompt_id, reason)
        self.consumer.ack([entry_id], pipe)
        pipe.execute()
        DROPPED.labels(reason).inc()

    @contextlib.contextmanager
    def in_background(self, version: int, stop: threading.Event):
        """Around a step's compute: a thread admits groups into ``next`` (and tops up prompts as
        drops free room), so generation and scoring go on meanwhile. Only this thread touches
        Redis until it is joined, before the step commits."""
        if not self.tc.admit_during_compute:
            yield
            return
        done, failed = threading.Event(), []

        def loop() -> None:
            try:
                while not done.is_set() and not stop.is_set():
                    self.feeder.top_up(version)
                    need = self.tc.groups_per_step - len(self.next.groups)
                    if need <= 0:
                        done.wait(0.05)
                        continue
                    for entry in self.consumer.read(need, block_ms=50):
                        self.admit(entry, version, into_next=True)
            except Exception as exc:  # re-raised in the step's thread
                failed.append(exc)

        thread = threading.Thread(target=loop, name="admit-next", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
        if failed:
            raise failed[0]

    def advance(self) -> None:
        """After a committed step: the next batch becomes the current one."""
        self.current, self.next = self.next, Batch()

    def close(self, pipe) -> None:
        """End of the run, in the caller's transaction: the current batch and every prompt
        still in flight are dropped as ``run_ended``."""
        for entry_id, g in zip(self.current.entry_ids, self.current.groups):
            self.ledger.mark_dropped(pipe, g.rollout.prompt.prompt_id, "run_ended")
            self.consumer.ack([entry_id], pipe)
        done = self.current.prompt_ids()
        for pid, status in self.ledger.statuses().items():
            if status == "enqueued" and pid not in done:
                self.ledger.mark_dropped(pipe, pid, "run_ended")
        self.current = Batch()
