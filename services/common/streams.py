"""Redis Streams with consumer groups: at-least-once delivery, handed on exactly once.

A consumer reads an entry, does its work, and then in ONE transaction (MULTI/EXEC) writes the
result downstream and acknowledges the input. A crash before EXEC leaves the entry pending;
it is re-read by the same consumer name on restart (``XREADGROUP ... 0``) or claimed by any
consumer once idle longer than the visibility timeout. A consumer never claims what it holds
(read, not yet acknowledged or released), and keeps what it holds from going idle (``XCLAIM
... JUSTID`` by its owner resets the idle time), so long work is not handed on twice. Entries that
cannot be decoded go to the dead-letter stream with the reason, in the same kind of
transaction, so nothing disappears silently; so does an entry delivered more than
``max_deliveries`` times (a poison message that crashes whoever reads it), with the owner's
``on_poison`` accounting (the ledger's ``dropped:poison``) in the same transaction. Acknowledged entries are deleted in the acking
transaction (unless ``keep_acked``): the ledger, not the streams, is the run's record.

All keys share one hash tag (``{t1}:...``) so the multi-key transactions stay valid on a
Redis Cluster.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis

from services.common import schemas

log = logging.getLogger(__name__)

PROMPTS = "prompts"
ROLLOUTS = "rollouts"
SCORED = "scored"
DEAD = "dead"
WEIGHTS = "weights"


@dataclass(frozen=True)
class Entry:
    id: str
    msg: schemas.Message


def redacted(url: str) -> str:
    """``url`` with its password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str) -> redis.Redis:
    # Long-lived services survive a Redis restart: the client reconnects on the next call.
    return redis.Redis.from_url(url, socket_keepalive=True, health_check_interval=10,
                                retry_on_timeout=True)


class Streams:
    def __init__(self, client: redis.Redis, prefix: str = "t1", keep_acked: bool = False,
                 max_deliveries: int = 0) -> None:
        self.r = client
        self.prefix = prefix
        self.keep_acked = keep_acked
        self.max_deliveries = max_deliveries  # 0: no limit

    def key(self, name: str) -> str:
        return f"{{{self.prefix}}}:{name}"

    # -- producing ---------------------------------------------------------------------------
    def publish(self, stream: str, msg: schemas.Message, pipe: redis.client.Pipeline | None = None):
        target = pipe if pipe is not None else self.r
        return target.xadd(self.key(stream), {"data": schemas.encode(msg), "kind": type(msg).__name__})

    def transaction(self) -> redis.client.Pipeline:
        return self.r.pipeline(transaction=True)

    def ensure_group(self, stream: str, group: str) -> None:
        try:
            self.r.xgroup_create(self.key(stream), group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def length(self, stream: str) -> int:
        return int(self.r.xlen(self.key(stream)))

    def pending_count(self, stream: str, group: str) -> int:
        info = self.r.xpending(self.key(stream), group)
        return int(info["pending"]) if info else 0

    def dead_letters(self) -> list[dict[str, str]]:
        out = []
        for _id, fields in self.r.xrange(self.key(DEAD)):
            out.append({k.decode(): v.decode(errors="replace") for k, v in fields.items()
                        if k != b"data"})
        return out


class Consumer:
    """One named member of a consumer group on one input stream."""

    def __init__(self, streams: Streams, stream: str, group: str, name: str,
                 expect: type[schemas.Message], visibility_timeout_s: float = 30.0,
                 block_ms: int = 500, on_poison=None) -> None:
        self.s = streams
        # on_poison(pipe, msg): account a poison entry in the dead-lettering transaction
        self.on_poison = on_poison
        self.stream = stream
        self.group = group
        self.name = name
        self.expect = expect
        self.visibility_ms = int(visibility_timeout_s * 1000)
        self.block_ms = block_ms
        self._own_pending_done = False
        self._last_reclaim = 0.0
        self._last_keep_alive = 0.0
        self.held: set[str] = set()  # read and neither acknowledged nor released
        self._held_lock = threading.Lock()  # an async worker reads in a thread, acks on its loop
        self.reclaimed = 0
        streams.ensure_group(stream, group)

    def read(self, count: int, block_ms: int | None = None) -> list[Entry]:
        """Next entries: own pending first (after a restart), then idle ones nobody holds, then new."""
        key = self.s.key(self.stream)
        self.keep_alive()
        if not self._own_pending_done:
            raw = self.s.r.xreadgroup(self.group, self.name, {key: "0"}, count=count)
            held = self.holding()
            entries = self._screen([e for e in (raw[0][1] if raw else []) if e[0].decode() not in held])
            if entries:
                self.reclaimed += len(entries)
                log.info("re-reading %d own pending entries on %s", len(entries), self.stream)
                return self._decode(entries)
            self._own_pending_done = True
        now = time.monotonic()
        if now - self._last_reclaim > max(self.visibility_ms / 2000, 0.5):
            self._last_reclaim = now
            entries = self._claim_idle(count)
            if entries:
                self.reclaimed += len(entries)
                log.warning("reclaimed %d idle entries on %s", len(entries), self.stream)
                return self._decode(entries)
        raw = self.s.r.xreadgroup(self.group, self.name, {key: ">"}, count=count,
                                  block=self.block_ms if block_ms is None else block_ms)
        return self._decode(raw[0][1] if raw else [])

    def _claim_idle(self, count: int) -> list:
        """Claim entries idle past the visibility timeout (a dead or stuck consumer's, or our
        own that a failed iteration released), never one this consumer holds. XCLAIM re-checks
        the idle time, so an owner that touched its entry meanwhile keeps it."""
        key = self.s.key(self.stream)
        held = self.holding()
        idle = self.s.r.xpending_range(key, self.group, "-", "+", count + len(held),
                                       idle=self.visibility_ms)
        ids = [p["message_id"] for p in idle if p["message_id"].decode() not in held][:count]
        if not ids:
            return []
        claimed = self.s.r.xclaim(key, self.group, self.name, self.visibility_ms, ids)
        return self._screen([e for e in claimed if e and e[1]])  # trimmed entries come back empty

    def _screen(self, raw_entries: list) -> list:
        """The entries not yet delivered more than ``max_deliveries`` times; the others (each
        delivery so far ended without an acknowledgement: their readers crashed or failed on
        them) go to the dead-letter stream instead of crash-looping a consumer."""
        limit = self.s.max_deliveries
        if not limit or not raw_entries:
            return raw_entries
        key = self.s.key(self.stream)
        pipe = self.s.r.pipeline(transaction=False)
        for entry_id, _ in raw_entries:
            pipe.xpending_range(key, self.group, entry_id, entry_id, 1)
        delivered = [info[0]["times_delivered"] if info else 0 for info in pipe.execute()]
        keep = []
        for (entry_id, fields), n in zip(raw_entries, delivered):
            if n <= limit:
                keep.append((entry_id, fields))
                continue
            eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            payload = fields.get(b"data", b"")
            pipe = self.s.transaction()
            self.dead_letter(eid, f"poison: delivered {n} times without an acknowledgement",
                             payload, pipe)
            if self.on_poison is not None:
                try:
                    msg = schemas.decode(payload, self.expect)
                except schemas.SchemaError:
                    msg = None
                self.on_poison(pipe, msg)
            pipe.execute()
        return keep

    def keep_alive(self, force: bool = False) -> None:
        """Reset the idle time of the entries this consumer holds (at most every third of the
        visibility timeout), so no peer claims work that is merely slow."""
        now = time.monotonic()
        held = self.holding()
        if not held or (not force and now - self._last_keep_alive < self.visibility_ms / 3000):
            return
        self._last_keep_alive = now
        self.s.r.xclaim(self.s.key(self.stream), self.group, self.name, 0, sorted(held), justid=True)

    def is_pending(self, entry_id: str) -> bool:
        """Whether ``entry_id`` is pending for this consumer (read, not acknowledged)."""
        return bool(self.s.r.xpending_range(self.s.key(self.stream), self.group, entry_id,
                                            entry_id, 1, consumername=self.name))

    def release(self, ids: list[str] | None = None) -> None:
        """Stop holding entries without acknowledging them (all with no ids): after a failed
        iteration they are claimed again, by anyone, once idle past the visibility timeout."""
        with self._held_lock:
            if ids is None:
                self.held.clear()
            else:
                self.held.difference_update(ids)

    def hold(self, entry_id: str) -> None:
        with self._held_lock:
            self.held.add(entry_id)

    def holding(self) -> set[str]:
        with self._held_lock:
            return set(self.held)

    def _decode(self, raw_entries) -> list[Entry]:
        out = []
        for entry_id, fields in raw_entries:
            eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            try:
                msg = schemas.decode(fields.get(b"data", b""), self.expect)
            except schemas.SchemaError as exc:
                self.dead_letter(eid, str(exc), fields.get(b"data", b""))
                continue
            out.append(Entry(eid, msg))
            self.hold(eid)
        return out

    def ack(self, ids: list[str], pipe: redis.client.Pipeline) -> None:
        if ids:
            # Forgotten when the transaction is queued: a failed EXEC leaves them pending, and
            # unheld, so they are claimed again after the visibility timeout.
            self.release(ids)
            pipe.xack(self.s.key(self.stream), self.group, *ids)
            if not self.s.keep_acked:
                # One consumer group per stream: once acknowledged, nobody reads the entry again,
                # so it goes now and Redis memory tracks the work in flight, not the run length.
                pipe.xdel(self.s.key(self.stream), *ids)

    def dead_letter(self, entry_id: str, reason: str, payload: bytes = b"",
                    pipe: redis.client.Pipeline | None = None) -> None:
        """Move an entry to the dead-letter stream with the reason; with ``pipe``, as part of
        the caller's transaction (which must then execute it)."""
        log.error("dead-letter %s %s: %s", self.stream, entry_id, reason)
        own = pipe is None
        pipe = self.s.transaction() if own else pipe
        pipe.xadd(self.s.key(DEAD), {"stream": self.stream, "entry_id": entry_id,
                                     "consumer": self.name, "reason": reason, "data": payload})
        self.ack([entry_id], pipe)
        if own:
            pipe.execute()
