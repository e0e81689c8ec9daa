"""How new weights reach the engine: one interface, one class per transport.

``WeightReceiver.load(engine, announcement)`` runs while the engine is paused (the worker has
stopped admitting prompts and finished or aborted the groups in flight) and returns the bytes
moved. The worker then checks the version against the trainer's probe (the gate), labels the
engine with the version and resumes.

- ``FilesystemReceiver``: the trainer's HF directory on shared storage, checked against the
  announced sha256, reloaded in place with vLLM's ``reload_weights``.
- ``CollectiveReceiver``: the trainer broadcasts the version from its memory to every engine its
  announcement names (``services/common/weight_broadcast.py``); the engine receives it through a
  worker extension and the same in-place reload. Each version is written to shared storage as
  well, so a generator the announcement does not name (it restarted, or scaled out, after the
  trainer chose whom to send to) or whose receive fails loads the files instead, and registers
  to be named in the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path

import msgspec

from services.common import weight_broadcast, weights
from services.common.config import GeneratorConfig
from services.common.schemas import WeightAnnouncement
from services.common.streams import Streams

log = logging.getLogger(__name__)


class WeightReceiver(ABC):
    """The generator's side of a weight transport."""

    via = "files"  # how the latest load arrived, for the sync record

    def engine_args(self) -> dict:
        """Extra vLLM engine arguments the transport needs (before the engine is built)."""
        return {}

    async def setup(self, engine) -> None:  # noqa: B027 - optional hook
        """Once, after the engine is up (join a communicator, ...)."""

    def heartbeat(self) -> None:  # noqa: B027 - optional hook
        """Often (every admission round): keep whatever registration the transport needs."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """On a clean stop."""

    @abstractmethod
    async def load(self, engine, ann: WeightAnnouncement) -> int:
        """Put ``ann``'s weights into the paused engine; returns the bytes received."""


class FilesystemReceiver(WeightReceiver):
    async def load(self, engine, ann: WeightAnnouncement) -> int:
        """The hash and the reload read the same bytes at once (the hash here, in a thread off
        the loop; the reload in the engine's process): a sync costs the slower of the two, not
        their sum. A mismatch raises after the reload, and the worker puts back the weights it
        served before."""
        check = asyncio.create_task(asyncio.to_thread(weights.verify, ann))
        try:
            await engine.areload(ann.uri)
        finally:
            await check  # raises on a mismatch (or a missing directory), whatever the reload did
        return sum(f.stat().st_size for f in Path(ann.uri).glob("*.safetensors"))


class CollectiveReceiver(WeightReceiver):
    HEARTBEAT_S = 5.0

    def __init__(self, s: Streams, name: str) -> None:
        self.s, self.name = s, name
        self.files = FilesystemReceiver()
        self.member: weight_broadcast.Member | None = None
        self._beat = 0.0

    async def setup(self, engine) -> None:
        info = (await engine.llm.collective_rpc("weight_member"))[0]
        self.member = weight_broadcast.Member(ranks=engine.engine_ranks(), seen=time.time(), **info)
        self.heartbeat()

    def heartbeat(self) -> None:
        now = time.time()
        if self.member is None or now - self._beat < self.HEARTBEAT_S:
            return
        self._beat = now
        self.member = msgspec.structs.replace(self.member, seen=now)
        weight_broadcast.register(self.s, self.name, self.member)

    async def close(self) -> None:
        await asyncio.to_thread(weight_broadcast.leave, self.s, self.name)

    async def load(self, engine, ann: WeightAnnouncement) -> int:
        offer = ann.broadcast
        self.via = "files"
        if offer is None or self.name not in offer.ranks:
            return await self.files.load(engine, ann)
        t0 = time.monotonic()
        try:
            nbytes = await engine.areceive(offer, offer.ranks[self.name])
            self.via = "broadcast"
            return nbytes
        except Exception as exc:  # noqa: BLE001 - the files are the fallback for any failure
            log.warning("broadcast of v%d failed after %.1fs (%s); loading its files",
                        ann.version, time.monotonic() - t0, str(exc).splitlines()[0][:200])
            self._beat = 0.0  # register again at once: the trainer drops who failed a sync
            self.heartbeat()
            return await self.files.load(engine, ann)


def make_receiver(cfg: GeneratorConfig, s: Streams, name: str = "generator") -> WeightReceiver:
    if cfg.weight_transport == "collective":
        return CollectiveReceiver(s, name)
    return FilesystemReceiver()
