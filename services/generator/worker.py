"""The generator's rollout loop: prompts in, one rollout group per prompt out, continuously.

Every admitted prompt is one engine request with ``n = K``; up to ``max_inflight_groups`` are
in the engine at once and vLLM batches their tokens continuously. A group is published and its
prompt acknowledged in ONE Redis transaction the moment its K samples are done, not when a
batch is.

Weight versions: prompts are read FIRST and the newest announcement is checked AFTER, because
the trainer announces a version before it admits the prompts meant for it. A new version is
loaded with admission stopped and nothing of the old version in flight (``sync_mode``: finish
the groups in flight, or abort them and put their prompts back on the prompts stream), so a
group is generated entirely by one version; vLLM's per-token weight-version spans are checked
on every group as a guard.

A version is served only once it proves itself: after the load the engine scores the trainer's
probe (``weight_gate.py``), and a disagreement restores the weights served before. An
announcement is its (version, digest), so a re-trained version under a number already seen is
loaded too.

Backpressure: no prompt is admitted while the rollouts stream holds more than
``max_pending_rollouts`` entries the verifier has not acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

import redis
from prometheus_client import Counter, Gauge, Histogram

from services.common import streams, weights
from services.common.config import GeneratorConfig
from services.common.ledger import Ledger
from services.common.logs import event
from services.common.schemas import Prompt, RolloutGroup
from services.generator import weight_gate
from services.generator.engine import RolloutEngine
from services.generator.transport import FilesystemReceiver, WeightReceiver

log = logging.getLogger(__name__)
GROUP = "generator"

TOKENS = Counter("t1_generator_tokens_total", "sampled tokens")
TOKENS_PER_S = Gauge("t1_generator_tokens_per_second", "sampled tokens/s over the last 10 s")
GROUPS = Counter("t1_generator_groups_total", "rollout groups published")
INFLIGHT = Gauge("t1_generator_inflight_groups", "prompt groups in the engine (queue depth)")
PENDING = Gauge("t1_generator_pending_rollouts", "rollouts not yet acknowledged downstream")
REQUEUED = Counter("t1_generator_requeued_prompts_total", "aborted groups put back on the queue")
VERSION = Gauge("t1_generator_policy_version", "policy version being served")
SYNC_SECONDS = Histogram("t1_generator_weight_sync_seconds", "announcement seen -> serving",
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
SYNC_LAST = Gauge("t1_generator_weight_sync_last_seconds", "latest announcement seen -> serving")
WEIGHT_ERRORS = Counter("t1_generator_weight_errors_total", "announced versions that failed to load")
GATE_REFUSALS = Counter("t1_generator_weight_gate_refusals_total",
                        "loaded versions whose probe log-probs disagreed with the trainer's")
GATE_DIFFERENCE = Gauge("t1_generator_weight_gate_max_difference",
                        "latest gate: max |log-prob difference| from the trainer's probe")
GATE_SECONDS = Gauge("t1_generator_weight_gate_seconds", "latest gate: seconds to score the probe")


class WeightsUnrecoverable(RuntimeError):
    """The weights served before a refused version cannot be restored: the process must restart
    (and start from the base model)."""


class TokenRate:
    """Tokens/s over a sliding window, for the gauge (Prometheus' rate() needs a scraper)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.events: list[tuple[float, int]] = []

    def add(self, n: int) -> float:
        now = time.monotonic()
        self.events.append((now, n))
        while self.events and self.events[0][0] < now - self.window_s:
            self.events.pop(0)
        span = max(now - self.events[0][0], 1.0) if self.events else 1.0
        return sum(k for _, k in self.events) / span


class GeneratorWorker:
    def __init__(self, s: streams.Streams, engine: RolloutEngine, name: str, cfg: GeneratorConfig,
                 visibility_timeout_s: float = 30.0, block_ms: int = 500,
                 receiver: WeightReceiver | None = None) -> None:
        self.s = s
        self.engine = engine
        self.name = name
        self.cfg = cfg
        self.block_ms = block_ms
        self.receiver = receiver or FilesystemReceiver()
        self.consumer = streams.Consumer(s, streams.PROMPTS, GROUP, name, Prompt,
                                         visibility_timeout_s, block_ms,
                                         on_poison=Ledger(s).mark_poisoned)
        self.version = 0
        self.digest = ""  # with the version, what is served: the base model has no digest
        self.uri = engine.model_path
        self.inflight: dict[str, asyncio.Task] = {}  # prompt entry id -> its generation task
        self._generating: set[str] = set()  # of those, the ones waiting on the engine
        self.last_sync: dict = {}
        self.pending_rollouts = 0
        self._failed: tuple[int, str] | None = None  # the announcement that failed to load
        self._stopping = False
        self._rate = TokenRate()
        self._report_version()

    def _report_version(self) -> None:
        VERSION.set(self.version)
        self.s.r.hset(self.s.key("generators"), self.name, self.version)

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Admit and generate until ``stop()``; then drain: the groups in flight are finished
        and published (unacknowledged prompts would otherwise wait out the visibility timeout)."""
        while not self._stopping:
            try:
                await self.maybe_update_weights()  # a restarted generator serves the newest at once
                await self.step()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Redis restarting: unacknowledged prompts stay pending and are claimed again
                # after the visibility timeout; keep the engine, reconnect on the next call.
                log.warning("redis unavailable (%s); retrying in 1s", exc)
                await asyncio.sleep(1.0)
            except WeightsUnrecoverable:
                raise
            except Exception:
                log.exception("generator iteration failed")
                await asyncio.sleep(1.0)
        await self.drain()

    def stop(self) -> None:
        """Stop admitting prompts; ``run`` returns once the groups in flight are published."""
        self._stopping = True

    async def step(self) -> int:
        """Admit as many prompts as fit now; returns how many were admitted."""
        room = self.cfg.max_inflight_groups - len(self.inflight)
        if room <= 0 or await self._backpressured():
            await self._wait_for_a_group(self.block_ms / 1000)
            return 0
        entries = await asyncio.to_thread(self.consumer.read, min(room, self.cfg.max_prompts_per_batch))
        await self.maybe_update_weights()
        admitted = 0
        for entry in entries:
            if not self._reject(entry):
                self._admit(entry)
                admitted += 1
        return admitted

    async def drain(self) -> None:
        while self.inflight:
            await asyncio.wait(list(self.inflight.values()), timeout=1.0)
            try:
                await asyncio.to_thread(self.consumer.keep_alive)  # long drains stay ours
            except (redis.ConnectionError, redis.TimeoutError):
                pass  # Redis restarting: the next keep-alive or the publish retries

    async def _wait_for_a_group(self, timeout_s: float) -> None:
        if self.inflight:
            await asyncio.wait(list(self.inflight.values()), timeout=timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(timeout_s)

    async def _backpressured(self) -> bool:
        if self.cfg.max_pending_rollouts <= 0:
            return False
        self.pending_rollouts = await asyncio.to_thread(unconsumed, self.s, streams.ROLLOUTS,
                                                        self.cfg.max_pending_rollouts)
        PENDING.set(self.pending_rollouts)
        return self.pending_rollouts > self.cfg.max_pending_rollouts

    # -- one group ---------------------------------------------------------------------------
    def _admit(self, entry: streams.Entry) -> None:
        task = asyncio.create_task(self._generate(entry, self.version))
        self.inflight[entry.id] = task
        INFLIGHT.set(len(self.inflight))
        task.add_done_callback(lambda _t, eid=entry.id: self._done(eid))

    def _done(self, entry_id: str) -> None:
        self.inflight.pop(entry_id, None)
        INFLIGHT.set(len(self.inflight))

    async def _generate(self, entry: streams.Entry, version: int) -> None:
        params = self.engine.sampling_params()
        t0 = time.monotonic()
        self._generating.add(entry.id)
        try:
            gen = await self.engine.agenerate(entry.msg.text, params,
                                              f"{entry.msg.prompt_id}-{uuid.uuid4().hex[:8]}")
        except asyncio.CancelledError:  # aborted for a weight update; vLLM aborted the request
            self._generating.discard(entry.id)
            await self._requeue(entry)
            return
        except Exception:
            self._generating.discard(entry.id)
            log.exception("generation of %s failed; putting it back on the queue", entry.msg.prompt_id)
            await self._requeue(entry)
            return
        self._generating.discard(entry.id)
        if gen.aborted or len(gen.weight_versions) > 1:
            if not gen.aborted:
                log.error("group %s mixed weight versions %s; generating it again",
                          entry.msg.prompt_id, sorted(gen.weight_versions))
            await self._requeue(entry)
            return
        group = RolloutGroup(prompt=entry.msg, prompt_token_ids=gen.prompt_token_ids,
                             samples=gen.samples, policy_version=version, generator_id=self.name,
                             temperature=params.temperature, top_p=params.top_p)
        await self._hand_on(entry, streams.ROLLOUTS, group)
        ntok = sum(len(x.token_ids) for x in gen.samples)
        TOKENS.inc(ntok)
        GROUPS.inc()
        TOKENS_PER_S.set(self._rate.add(ntok))
        log.debug("published %s: %d tokens, v%d, %.2fs", entry.msg.prompt_id, ntok, version,
                  time.monotonic() - t0)

    async def _requeue(self, entry: streams.Entry) -> None:
        """Put a prompt back on the prompts stream for any replica (aborted or failed)."""
        await self._hand_on(entry, streams.PROMPTS, entry.msg)
        REQUEUED.inc()

    async def _hand_on(self, entry: streams.Entry, stream: str, msg) -> None:
        """Publish ``msg`` and acknowledge ``entry`` in one transaction, retrying through a
        Redis outage. The reply to an EXEC can be lost after Redis applied it, so before each
        retry the entry's pending state says whether the last attempt went through."""
        while True:
            try:
                pipe = self.s.transaction()
                self.s.publish(stream, msg, pipe)
                self.consumer.ack([entry.id], pipe)
                await asyncio.to_thread(pipe.execute)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("handing on %s failed (%s); retrying in 1s", entry.msg.prompt_id, exc)
            while True:
                await asyncio.sleep(1.0)
                try:
                    if not await asyncio.to_thread(self.consumer.is_pending, entry.id):
                        return  # the failed-looking EXEC was applied (or a peer took it over)
                    break
                except (redis.ConnectionError, redis.TimeoutError):
                    continue
            self.consumer.hold(entry.id)

    def _reject(self, entry: streams.Entry) -> bool:
        """Dead-letter a prompt the engine cannot take, and close its books, in one transaction."""
        reason = self.engine.prompt_error(entry.msg.text)
        if reason is None:
            return False
        pipe = self.s.transaction()
        self.consumer.dead_letter(entry.id, f"{entry.msg.prompt_id}: {reason}", pipe=pipe)
        Ledger(self.s).mark_dropped(pipe, entry.msg.prompt_id, "prompt_too_long")
        pipe.execute()
        return True

    # -- weights -----------------------------------------------------------------------------
    def _refuse(self, ann, reason: str) -> None:
        """Keep serving what is served; this announcement is not tried again (a re-published
        version with other bytes is a new announcement)."""
        self._failed = (ann.version, ann.sha256)
        WEIGHT_ERRORS.inc()
        log.error("weights v%d %s; still serving v%d", ann.version, reason, self.version)
        self._report_gate({"version": ann.version, "passed": False, "reason": reason,
                           "serving": self.version})

    def _report_gate(self, record: dict) -> None:
        """The latest sync's outcome, for ``t1 status`` (a hash beside the served versions)."""
        self.s.r.hset(self.s.key("generators:sync"), self.name, json.dumps(record))

    async def _restore(self) -> None:
        """Put back the weights served before a refused or failed load (the engine paused)."""
        path = Path(self.uri)
        if self.digest and (not path.exists()
                            or await asyncio.to_thread(weights.payload_sha256, path) != self.digest):
            raise WeightsUnrecoverable(
                f"a new version was refused and v{self.version}'s files at {path} are gone or "
                "changed: restarting to load the newest version from scratch")
        await self.engine.areload(str(path))

    async def maybe_update_weights(self) -> bool:
        """Load the newest announcement if it is not what is served: stop admitting (the caller
        is the admission loop), finish or abort what is in flight, pause the engine, load, reset
        the prefix cache, report the version, resume. True if new weights are served.

        An announcement is its (version, digest), not its number: a trainer that lost its last
        commit re-trains and re-publishes v_n with other bytes (or, having lost more, announces
        a version below the one served), and the generator must serve those."""
        self.receiver.heartbeat()
        ann = weights.latest(self.s)
        if ann is None or (ann.version, ann.sha256) in ((self.version, self.digest), self._failed):
            return False
        if ann.version <= self.version:
            log.warning("trainer re-published v%d (digest %s) while v%d (digest %s) is served; "
                        "loading it", ann.version, ann.sha256[:12], self.version, self.digest[:12])
        t0 = time.monotonic()
        if self.cfg.sync_mode == "abort":
            # Cancel the groups waiting on the engine (their prompts go back on the queue), not
            # the engine's requests: a task admitted a moment ago may not have added its request
            # yet, and would then wait in a paused engine forever. Tasks not yet started, or
            # already handing on, just finish.
            for entry_id in list(self._generating):
                self.inflight[entry_id].cancel()
            await self.drain()
            await self.engine.pause("abort")  # OpenAI-API requests end too
        else:
            await self.drain()
            await self.engine.pause("wait")  # OpenAI-API requests finish on the old weights
        drained_s = time.monotonic() - t0
        try:
            nbytes = await self.receiver.load(self.engine, ann)
        except Exception as exc:  # keep serving the old version; the next announcement may load
            try:  # a load that failed part-way (a hash mismatch after the reload) left its bytes
                await self._restore()
            finally:
                await self.engine.resume()
            self._refuse(ann, f"not loaded: {exc}")
            return False
        await self.engine.resume()
        gate = None
        if self.cfg.weight_gate and ann.probe is not None:
            gate = await weight_gate.check(self.engine, ann.probe, self.cfg.weight_gate_tolerance)
            GATE_DIFFERENCE.set(gate.max_difference)
            GATE_SECONDS.set(gate.seconds)
            if not gate.passed:
                GATE_REFUSALS.inc()
                await self.engine.pause("wait")
                try:
                    await self._restore()
                finally:
                    await self.engine.resume()
                self._refuse(ann, f"failed the gate: {gate.describe()}")
                return False
        await self.engine.llm.update_weight_version(str(ann.version))
        seconds = time.monotonic() - t0
        SYNC_SECONDS.observe(seconds)
        SYNC_LAST.set(seconds)
        sync = {"version": ann.version, "seconds": round(seconds, 4),
                "drain_seconds": round(drained_s, 4), "bytes": nbytes, "via": self.receiver.via}
        if gate is not None:
            sync |= {"gate_max_difference": gate.max_difference, "gate_seconds": round(gate.seconds, 4)}
        self.last_sync = sync  # before the version: whoever sees the new version sees its sync
        self.version, self.digest, self.uri = ann.version, ann.sha256, ann.uri
        self._report_version()
        self._report_gate({"passed": True, **sync})
        event(log, "serving new weights", **self.last_sync, mode=self.cfg.sync_mode)
        return True


def unconsumed(s: streams.Streams, stream: str, limit: int) -> int:
    """Entries of ``stream`` that its slowest consumer group has not acknowledged, read or not.

    Cheap: one XINFO GROUPS. Redis >= 7 reports each group's ``lag`` (unread) beside
    ``pending`` (read, unacknowledged). Where it does not (6.2, or after deletions), XLEN is the
    answer when acknowledged entries are deleted (``keep_acked`` off, the default); with
    ``keep_acked`` the unread tail is counted by an XRANGE capped at ``limit + 1`` entries.
    """
    key = s.key(stream)
    groups = s.r.xinfo_groups(key) if s.r.exists(key) else []
    if not groups:
        return int(s.r.xlen(key))  # nobody reads it yet: everything is unconsumed
    worst = 0
    for g in groups:
        lag = g.get("lag")
        if lag is None:
            if not s.keep_acked:
                return int(s.r.xlen(key))
            last = g["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else last
            lag = len(s.r.xrange(key, f"({last}", "+", count=limit + 1))
        worst = max(worst, int(g["pending"]) + int(lag))
    return worst
