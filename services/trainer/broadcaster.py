"""Rank 0's side of the collective weight transport: offer each version, then broadcast it.

``offer`` runs while the version's files are written (same parameters): it picks the generators
registered in the last ``MEMBER_TTL_S`` whose engines hold weights on the same kind of device,
gives each its ranks and plans the buckets; the offer goes into the version's announcement, in
the step's commit. ``send`` runs after the commit (generators serve committed versions only):
it makes the sync's group, broadcasts, and closes the session. A member that never joined is
dropped from the registry (a live one registers again on its next heartbeat); on any failure
the members load the version's files, which exist for every version.

The trainer waits for the sync: the broadcast needs every member's engine idle, so a generator
that finishes its groups in flight (``generator.sync_mode=finish``) delays the trainer by as
much; ``sync_mode=abort`` keeps that wait short.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from prometheus_client import Counter, Gauge

from services.common import streams
from services.common import weight_broadcast as wb
from services.common.config import TrainerConfig

log = logging.getLogger(__name__)

SECONDS = Gauge("t1_trainer_broadcast_seconds", "latest weight broadcast: group made -> last bucket sent")
BYTES = Counter("t1_trainer_broadcast_bytes_total", "weight bytes broadcast to generators")
FAILURES = Counter("t1_trainer_broadcast_failures_total", "weight broadcasts given up (members load files)")


class WeightBroadcaster:
    def __init__(self, tc: TrainerConfig, s: streams.Streams) -> None:
        self.tc, self.s = tc, s
        self.store = wb.host_store(tc.broadcast_port, tc.broadcast_timeout_s)
        self.address = f"{tc.broadcast_host}:{tc.broadcast_port}"
        self.result_key = s.key("trainer:broadcast")
        log.info("weight broadcast store on port %d (generators reach it at %s)",
                 tc.broadcast_port, self.address)

    def close(self) -> None:
        """Stop serving the store (its port is free again once the last reference goes)."""
        self.store = None

    def offer(self, lm, version: int) -> wb.BroadcastOffer | None:
        """The sync of ``version`` for the live members (None: nobody to send to)."""
        param = next(lm.parameters())
        backend = wb.backend_for(param.device)
        members = wb.live_members(self.s)
        usable = {n: m for n, m in members.items() if m.backend == backend}
        for name in sorted(set(members) - set(usable)):
            log.warning("generator %s receives over %s, the trainer's weights need %s: it loads files",
                        name, members[name].backend, backend)
        if not usable:
            return None
        dtypes = {m.dtype for m in usable.values()}
        # the serving dtype when every member agrees (bf16 engines: half the bytes of fp32)
        dtype = wb.to_dtype(dtypes.pop()) if len(dtypes) == 1 else param.dtype
        ranks, world = {}, 1
        for name in sorted(usable):
            ranks[name] = world
            world += usable[name].ranks
        buckets = wb.plan_buckets([(n, p.shape) for n, p in lm.named_parameters()], dtype,
                                  int(self.tc.broadcast_bucket_mb * (1 << 20)))
        return wb.BroadcastOffer(session=f"v{version}-{uuid.uuid4().hex[:12]}", address=self.address,
                                 world=world, ranks=ranks, backend=backend,
                                 timeout_s=self.tc.broadcast_timeout_s, buckets=buckets)

    def send(self, lm, version: int, offer: wb.BroadcastOffer) -> dict:
        """Broadcast ``lm``'s parameters as ``offer`` planned; returns the outcome (also kept in
        Redis for ``t1 status``). Never raises for a member's fault."""
        t0 = time.monotonic()
        device = next(lm.parameters()).device
        pg = None
        try:
            pg = wb.open_group(offer, 0, store=self.store, device=device)
            nbytes = wb.send(pg, offer, dict(lm.named_parameters()), device)
            result = {"version": version, "ok": True, "bytes": nbytes, "members": sorted(offer.ranks)}
            BYTES.inc(nbytes)
        except Exception as exc:  # noqa: BLE001 - a member's failure must not stop training
            joined = wb.joined_ranks(self.store, offer)
            absent = sorted(n for n, r in offer.ranks.items() if r not in joined)
            for name in absent:
                wb.leave(self.s, name)
            result = {"version": version, "ok": False, "absent": absent,
                      "reason": str(exc).splitlines()[0][:300]}
            FAILURES.inc()
            log.warning("broadcast of v%d given up (%s); absent: %s; the members load its files",
                        version, result["reason"], absent or "none")
        finally:
            wb.close_session(self.store, offer)
            if pg is not None:
                wb.close_group(pg)
                pg = None  # gloo closes its sockets with the last reference: members waiting
                # on a sync that failed here hear of it at once instead of at their timeout
        result["seconds"] = round(time.monotonic() - t0, 4)
        SECONDS.set(result["seconds"])
        self.s.r.set(self.result_key, json.dumps(result))
        return result
