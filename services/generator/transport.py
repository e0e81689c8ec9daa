"""How new weights reach the engine: one interface, one class per transport.

``WeightReceiver.load(engine, announcement)`` runs while the engine is paused (the worker has
stopped admitting prompts and finished or aborted the groups in flight) and returns the bytes
moved. The worker then labels the engine with the version and resumes.

- ``FilesystemReceiver`` (default, tested): the trainer's HF directory on shared storage,
  checked against the announced sha256, reloaded in place with vLLM's ``reload_weights``.
- ``NcclReceiver`` (GPU clusters): vLLM's native weight-transfer API
  (``init_weight_transfer_engine`` / ``update_weights``) over an NCCL group with the trainer.
  It needs CUDA; no machine of this project has a GPU, so it is untested beyond its
  construction (which fails with a clear error on a CPU) and its pure helpers.
"""

from __future__ import annotations

import asyncio
import json
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


NCCL_SCHEME = "nccl://"


def nccl_meta_key(s: Streams, version: int) -> str:
    """Where the trainer's NCCL publisher puts a version's tensor list (names, dtypes, shapes)."""
    return s.key(f"weights:nccl:{version}")


def nccl_update_info(meta: dict) -> dict:
    """vLLM's ``NCCLWeightTransferUpdateInfo`` payload from the trainer's JSON tensor list
    ``{"params": [{"name", "dtype", "shape"}, ...]}`` (dtype as torch names it: "bfloat16")."""
    params = meta["params"]
    return {"names": [p["name"] for p in params],
            "dtype_names": [str(p["dtype"]).removeprefix("torch.") for p in params],
            "shapes": [list(p["shape"]) for p in params]}


def nccl_update_bytes(info: dict) -> int:
    import math

    import torch

    return sum(math.prod(shape) * getattr(torch, dtype).itemsize
               for dtype, shape in zip(info["dtype_names"], info["shapes"]))


class NcclReceiver(WeightReceiver):
    """vLLM's NCCL weight transfer: the trainer (rank 0) broadcasts, every generator receives.

    Contract with the trainer's publisher: at start-up, generator replica i joins the group at
    ``generator.nccl_master`` as rank ``generator.nccl_rank`` (1 + i) of ``nccl_world_size``; for each
    version the trainer writes the tensor list under ``weights:nccl:{version}`` (JSON, see
    ``nccl_update_info``), announces ``uri = "nccl://{version}"``, and broadcasts once every
    generator has entered ``update_weights`` (they report the version they serve when done).
    """

    def __init__(self, cfg: GeneratorConfig, s: Streams) -> None:
        from vllm.platforms import current_platform

        if not current_platform.is_cuda():
            raise RuntimeError(
                "generator.weight_transport=nccl needs vLLM's CUDA build on a GPU; this engine "
                f"is the {current_platform.device_type or 'unknown'} build. Use "
                "weight_transport=filesystem (shared storage) here.")
        if not cfg.nccl_master or cfg.nccl_world_size < 2:
            raise ValueError("generator.weight_transport=nccl needs generator.nccl_master "
                             "(host:port of the trainer's rendezvous) and nccl_world_size >= 2")
        self.cfg = cfg
        self.s = s

    def engine_args(self) -> dict:
        from vllm.config import WeightTransferConfig

        return {"weight_transfer_config": WeightTransferConfig(backend="nccl")}

    async def setup(self, engine) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        host, port = self.cfg.nccl_master.rsplit(":", 1)
        await engine.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info={
            "master_address": host, "master_port": int(port), "rank_offset": self.cfg.nccl_rank,
            "world_size": self.cfg.nccl_world_size}))

    async def load(self, engine, ann: WeightAnnouncement) -> int:
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        if not ann.uri.startswith(NCCL_SCHEME):
            raise ValueError(f"weights v{ann.version}: {ann.uri!r} is not an nccl:// announcement")
        raw = await asyncio.to_thread(self.s.r.get, nccl_meta_key(self.s, ann.version))
        if raw is None:
            raise ValueError(f"weights v{ann.version}: no tensor list at {nccl_meta_key(self.s, ann.version)}")
        info = nccl_update_info(json.loads(raw))
        await engine.llm.start_weight_update()
        await engine.llm.update_weights(WeightTransferUpdateRequest(update_info=info))
        await engine.llm.finish_weight_update()
        await engine.after_weight_update()
        return nccl_update_bytes(info)


def make_receiver(cfg: GeneratorConfig, s: Streams) -> WeightReceiver:
    if cfg.weight_transport == "nccl":
        return NcclReceiver(cfg, s)
    return FilesystemReceiver()
