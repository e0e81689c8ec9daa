"""DeepSpeed checkpoints of the trainer: model, optimizer, anchor, version, RNG.

The commit point of a step is the Redis transaction that announces its version and acknowledges
its groups. A checkpoint is written just before it, so on resume the newest checkpoint whose
version is <= the announced version is the one to load: one with a higher version belongs to a
step that never committed (its groups are still pending and will be trained again from the
committed state). The dataset cursor and the set of consumed groups live in Redis, written in
that same transaction.
"""

from __future__ import annotations

import ast
import json
import logging
import random
import shutil
from pathlib import Path

import torch

from services.trainer import dist

log = logging.getLogger(__name__)


def _python_rng(saved) -> tuple:
    """``random.getstate()`` back from JSON. Checkpoints written before 2026-12-01 hold its repr
    as a string; read as a literal."""
    if isinstance(saved, str):
        saved = ast.literal_eval(saved)
    version, internal, gauss_next = saved
    return int(version), tuple(internal), gauss_next


def tag(version: int) -> str:
    return f"v{version:06d}"


class Checkpointer:
    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = max(2, keep)  # the previous one must survive an uncommitted newer one

    def versions(self) -> list[int]:
        out = []
        for d in self.root.glob("v[0-9]*"):
            if (d / "t1_state.json").exists():  # written last: the checkpoint is complete
                out.append(int(d.name[1:]))
        return sorted(out)

    def best_for(self, committed_version: int) -> int | None:
        usable = [v for v in self.versions() if v <= committed_version]
        return usable[-1] if usable else None

    def save(self, engine, anchor, version: int) -> None:
        """Collective: every rank writes its DeepSpeed shard; rank 0 then adds the T1 state."""
        t = tag(version)
        engine.save_checkpoint(str(self.root), tag=t, save_latest=False)
        dist.barrier()  # every shard is on disk before the completion marker says so
        if not dist.is_main():
            return
        torch.save(anchor.state_dict(), self.root / t / "anchor.pt")
        state = {"version": version, "anchor_version": anchor.version,
                 "torch_rng": torch.get_rng_state().tolist(), "python_rng": random.getstate()}  # (int, tuple of ints, float | None): JSON lists
        tmp = self.root / t / "t1_state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.rename(self.root / t / "t1_state.json")
        for old in self.versions()[:-self.keep]:
            shutil.rmtree(self.root / tag(old), ignore_errors=True)

    def load(self, engine, anchor, version: int) -> dict:
        """Collective, like save; every rank restores the anchor (each computes anchor log-probs)."""
        t = tag(version)
        path, _ = engine.load_checkpoint(str(self.root), tag=t, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.root / t}")
        anchor.load_state_dict(torch.load(self.root / t / "anchor.pt", weights_only=True))
        state = json.loads((self.root / t / "t1_state.json").read_text())
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        random.setstate(_python_rng(state["python_rng"]))
        log.info("resumed from checkpoint %s (anchor v%d)", t, anchor.version)
        return state

