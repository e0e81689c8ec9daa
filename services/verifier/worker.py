"""The verifier's queue worker: rollouts in, scored groups out, handed on exactly once."""

from __future__ import annotations

import logging
import threading

from services.common import streams
from services.common.ledger import Ledger
from services.common.logs import event
from services.common.schemas import RolloutGroup, ScoredGroup
from services.common.verify_api import VerifyOptions
from services.verifier.app import ITEMS, LATENCY
from services.verifier.scoring import Scorer

log = logging.getLogger(__name__)
GROUP = "verifier"


def finish(reason: str) -> str:
    # "abort" (generation cut short by the engine) has no final answer either: treat as truncated.
    return "stop" if reason == "stop" else "length"


class VerifierWorker:
    def __init__(self, s: streams.Streams, scorer: Scorer, name: str,
                 visibility_timeout_s: float, block_ms: int = 500) -> None:
        self.s = s
        self.scorer = scorer
        self.consumer = streams.Consumer(s, streams.ROLLOUTS, GROUP, name, RolloutGroup,
                                         visibility_timeout_s, block_ms,
                                         on_poison=Ledger(s).mark_poisoned)
        self.stop_event = threading.Event()
        self.groups_done = 0

    def score_group(self, group: RolloutGroup) -> ScoredGroup:
        strict = self.scorer.cfg.rl_strict
        verdicts = self.scorer.score_batch([
            (x.text, group.prompt.gold, group.prompt.task,
             VerifyOptions(finish_reason=finish(x.finish_reason), strict=strict))
            for x in group.samples])
        for v in verdicts:
            ITEMS.labels("queue", v.status).inc()
            LATENCY.labels("queue").observe(v.latency_ms / 1000)
        return ScoredGroup(rollout=group, verdicts=verdicts)

    def run_once(self, count: int = 4) -> int:
        entries = self.consumer.read(count)
        for entry in entries:
            scored = self.score_group(entry.msg)
            pipe = self.s.transaction()
            self.s.publish(streams.SCORED, scored, pipe)
            self.consumer.ack([entry.id], pipe)
            pipe.execute()
            self.groups_done += 1
            event(log, "scored group", prompt_id=entry.msg.prompt.prompt_id,
                  version=entry.msg.policy_version,
                  mean_reward=sum(v.reward for v in scored.verdicts) / max(len(scored.verdicts), 1))
        return len(entries)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.run_once()
            except Exception:  # keep serving; Redis blips reconnect on the next call
                log.exception("verifier worker iteration failed")
                self.consumer.release()  # the unacknowledged groups are claimed again when idle
                self.stop_event.wait(1.0)
