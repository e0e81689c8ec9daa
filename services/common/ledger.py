"""The run's accounting: where every admitted prompt ended up.

Each prompt id has one status: ``enqueued`` until the trainer either trains on its group
(``trained:<step>``) or drops it (``dropped:<reason>``). Status changes are written in the same
Redis transaction that acknowledges the entry, so the ledger and the streams never disagree,
and after any crash ``enqueued == trained + dropped + in_flight`` still holds.
"""

from __future__ import annotations

from collections import Counter

from services.common import schemas
from services.common.streams import Streams


def prompt_id_of(msg) -> str | None:
    if isinstance(msg, schemas.Prompt):
        return msg.prompt_id
    if isinstance(msg, schemas.RolloutGroup):
        return msg.prompt.prompt_id
    if isinstance(msg, schemas.ScoredGroup):
        return msg.rollout.prompt.prompt_id
    return None


class Ledger:
    def __init__(self, s: Streams) -> None:
        self.s = s
        self.status_key = s.key("ledger:status")
        self.counts_key = s.key("ledger:counts")

    def mark_enqueued(self, pipe, prompt_id: str) -> None:
        pipe.hset(self.status_key, prompt_id, "enqueued")
        pipe.hincrby(self.counts_key, "enqueued", 1)

    def mark_trained(self, pipe, prompt_id: str, step: int, version: int) -> None:
        pipe.hset(self.status_key, prompt_id, f"trained:{step}:v{version}")
        pipe.hincrby(self.counts_key, "trained", 1)

    def mark_dropped(self, pipe, prompt_id: str, reason: str) -> None:
        pipe.hset(self.status_key, prompt_id, f"dropped:{reason}")
        pipe.hincrby(self.counts_key, "dropped", 1)
        pipe.hincrby(self.counts_key, f"dropped:{reason}", 1)

    def mark_poisoned(self, pipe, msg) -> None:
        """A consumer's ``on_poison``: the entry's prompt (a Prompt, RolloutGroup or ScoredGroup)
        is dropped as ``poison`` in the dead-lettering transaction, if it is still in flight."""
        pid = prompt_id_of(msg)
        if pid is not None and self.status(pid) == "enqueued":
            self.mark_dropped(pipe, pid, "poison")

    def status(self, prompt_id: str) -> str | None:
        raw = self.s.r.hget(self.status_key, prompt_id)
        return raw.decode() if raw is not None else None

    def counts(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.s.r.hgetall(self.counts_key).items()}

    def in_flight(self) -> int:
        c = self.counts()
        return c.get("enqueued", 0) - c.get("trained", 0) - c.get("dropped", 0)

    def statuses(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.s.r.hgetall(self.status_key).items()}

    def audit(self) -> dict[str, int]:
        """Recount from per-prompt statuses; must agree with the counters."""
        kinds = Counter(v.split(":", 1)[0] for v in self.statuses().values())
        return {"prompts": sum(kinds.values()), **kinds}
