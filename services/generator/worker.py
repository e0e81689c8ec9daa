"""The generator's rollout loop: prompts in, one rollout group per prompt out.

Order inside an iteration matters for staleness: prompts are read FIRST and the newest weight
announcement is checked AFTER, because the trainer announces a version before it admits the
prompts meant for it. A group is generated entirely by one version: weights change only
between batches.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import Counter, Gauge, Histogram

from services.common import streams, weights
from services.common.ledger import Ledger
from services.common.logs import event
from services.common.schemas import Prompt, RolloutGroup
from services.generator.engine import RolloutEngine

log = logging.getLogger(__name__)
GROUP = "generator"

TOKENS = Counter("t1_generator_tokens_total", "sampled tokens")
GROUPS = Counter("t1_generator_groups_total", "rollout groups published")
VERSION = Gauge("t1_generator_policy_version", "policy version being served")
SYNC_SECONDS = Histogram("t1_generator_weight_sync_seconds", "announcement seen -> serving")
WEIGHT_ERRORS = Counter("t1_generator_weight_errors_total", "announced versions that failed to load")


class GeneratorWorker:
    def __init__(self, s: streams.Streams, engine: RolloutEngine, name: str,
                 max_prompts: int, visibility_timeout_s: float, block_ms: int = 500) -> None:
        self.s = s
        self.engine = engine
        self.name = name
        self.max_prompts = max_prompts
        self.consumer = streams.Consumer(s, streams.PROMPTS, GROUP, name, Prompt,
                                         visibility_timeout_s, block_ms)
        self.version = 0
        self._failed_version = -1
        self.stop_event = threading.Event()
        self._report_version()

    def _report_version(self) -> None:
        VERSION.set(self.version)
        self.s.r.hset(self.s.key("generators"), self.name, self.version)

    def maybe_update_weights(self) -> None:
        ann = weights.latest(self.s)
        if ann is None or ann.version <= self.version or ann.version == self._failed_version:
            return
        try:
            weights.verify(ann)
            seconds = self.engine.load_weights(ann.uri)
        except Exception as exc:  # keep serving the old version; the next announcement may load
            self._failed_version = ann.version
            WEIGHT_ERRORS.inc()
            log.error("weights v%d not loaded, still serving v%d: %s", ann.version, self.version, exc)
            return
        SYNC_SECONDS.observe(seconds)
        self.version = ann.version
        self._report_version()
        event(log, "serving new weights", version=self.version, seconds=round(seconds, 3))

    def run_once(self) -> int:
        entries = self.consumer.read(self.max_prompts)
        self.maybe_update_weights()
        entries = [e for e in entries if not self._reject(e)]
        if not entries:
            return 0
        t0 = time.monotonic()
        params = self.engine.sampling_params()
        generated = self.engine.generate([e.msg.text for e in entries], params)
        pipe = self.s.transaction()
        ntok = 0
        for entry, gen in zip(entries, generated):
            group = RolloutGroup(prompt=entry.msg, prompt_token_ids=gen.prompt_token_ids,
                                 samples=gen.samples, policy_version=self.version,
                                 generator_id=self.name, temperature=params.temperature,
                                 top_p=params.top_p)
            self.s.publish(streams.ROLLOUTS, group, pipe)
            ntok += sum(len(x.token_ids) for x in gen.samples)
        self.consumer.ack([e.id for e in entries], pipe)
        pipe.execute()
        TOKENS.inc(ntok)
        GROUPS.inc(len(entries))
        dt = time.monotonic() - t0
        event(log, "published rollouts", groups=len(entries), tokens=ntok, version=self.version,
              seconds=round(dt, 3), tokens_per_s=round(ntok / max(dt, 1e-9)))
        return len(entries)

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

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("generator iteration failed")
                self.stop_event.wait(1.0)
