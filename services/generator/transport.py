"""How new weights reach the engine: one interface, one class per transport.

``WeightReceiver.load(engine, announcement)`` runs while the engine is paused (the worker has
stopped admitting prompts and finished or aborted the groups in flight) and returns the bytes
moved. The worker then labels the engine with the version and resumes.

- ``FilesystemReceiver`` (the one transport today): the trainer's HF directory on shared
  storage, checked against the announced sha256, reloaded in place with vLLM's
  ``reload_weights``.

A collective transport (trainer memory to engine memory over a torch.distributed group) belongs
behind the same interface, with a trainer side that creates the group; until both sides exist no
config value selects one.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from pathlib import Path

from services.common import weights
from services.common.config import GeneratorConfig
from services.common.schemas import WeightAnnouncement
from services.common.streams import Streams


class WeightReceiver(ABC):
    """The generator's side of a weight transport."""

    def engine_args(self) -> dict:
        """Extra vLLM engine arguments the transport needs (before the engine is built)."""
        return {}

    async def setup(self, engine) -> None:  # noqa: B027 - optional hook
        """Once, after the engine is up (join a communicator, ...)."""

    @abstractmethod
    async def load(self, engine, ann: WeightAnnouncement) -> int:
        """Put ``ann``'s weights into the paused engine; returns the bytes received."""


class FilesystemReceiver(WeightReceiver):
    async def load(self, engine, ann: WeightAnnouncement) -> int:
        # hashing reads every byte: off the loop, so HTTP and Redis keep being served
        await asyncio.to_thread(weights.verify, ann)
        await engine.areload(ann.uri)
        return sum(f.stat().st_size for f in Path(ann.uri).glob("*.safetensors"))


def make_receiver(cfg: GeneratorConfig, s: Streams) -> WeightReceiver:
    return FilesystemReceiver()
