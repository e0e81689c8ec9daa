"""DeepSpeed engine construction: the same code on CPU (gloo) and GPU (nccl)."""

from __future__ import annotations

import datetime
import logging
import os
import sys
import time
from pathlib import Path

import torch

from services.common.config import TrainerConfig
from services.common.net import free_port

log = logging.getLogger(__name__)


STALE_BUILD_LOCK_S = 600  # a JIT build of one op takes well under two minutes


def prepare_extension_builds() -> Path:
    """DeepSpeed JIT-builds its CPU ops (shm comm, fused Adam) on first use, under a lock file.

    Builds go to this environment's own directory (two venvs sharing ~/.cache would rebuild
    over each other on every start), and a lock left by a process killed mid-build -- which
    would make every later trainer wait forever -- is removed once it is clearly stale.
    """
    root = Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions")))
    for lock in root.glob("*/lock"):
        age = time.time() - lock.stat().st_mtime
        if age > STALE_BUILD_LOCK_S:
            log.warning("removing a stale build lock %s (%.0f s old)", lock, age)
            lock.unlink(missing_ok=True)
    return root


def init_distributed(timeout_s: float | None = None) -> None:
    """The process group (NCCL on GPUs, gloo on the CPU) from torchrun's / the DeepSpeed
    launcher's environment, with single-process defaults when neither launched it (local stack,
    tests). ``timeout_s`` bounds every collective's wait for a missing rank."""
    import deepspeed

    prepare_extension_builds()
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    own_port = "MASTER_PORT" not in os.environ
    if torch.cuda.is_available():
        # before any collective: NCCL binds each rank's communicator to the current device, and
        # every rank left on cuda:0 would share one GPU (or hang in the first all-reduce)
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    for attempt in range(3):
        if own_port:
            os.environ["MASTER_PORT"] = str(free_port())
        try:
            kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
            deepspeed.init_distributed(dist_backend=backend, **kwargs)
            return
        except torch.distributed.DistNetworkError:
            # a port this process picked was taken by another before the store bound it
            if not own_port or attempt == 2:
                raise
            log.warning("rendezvous port %s was taken meanwhile; trying another", os.environ["MASTER_PORT"])


def train_dtype(cfg: TrainerConfig) -> torch.dtype:
    """The dtype the engine computes in (its fp32 master weights live in the optimizer)."""
    return torch.bfloat16 if bf16(cfg) else torch.float32


def bf16(cfg: TrainerConfig) -> bool:
    """bf16 on GPUs (``precision: auto``), fp32 on the CPU (no fast bf16 kernels there)."""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available())


def ds_config(cfg: TrainerConfig, lr: float) -> dict:
    return {
        # Batches are shaped by the trainer (one group batch = one step); DeepSpeed's nominal
        # micro-batch bookkeeping is set to 1 so it does not reshape anything.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage,
                              "stage3_param_persistence_threshold": cfg.zero3_param_persistence_threshold},
        "optimizer": {"type": "AdamW",
                      "params": {"lr": lr, "betas": [0.9, 0.999], "eps": cfg.adam_eps,
                                 "weight_decay": cfg.weight_decay,
                                 # on GPUs PyTorch's own AdamW: DeepSpeed's FusedAdam would first
                                 # JIT-compile with nvcc, which an inference-style image lacks
                                 "torch_adam": torch.cuda.is_available()}},
        "bf16": {"enabled": bf16(cfg)},  # fp32 master weights either way
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
    }


def build_engine(model: torch.nn.Module, cfg: TrainerConfig, lr: float):
    """DeepSpeed engine around ``model``, a ``policy.Policy`` (its HF model is ``model.lm``)."""
    import deepspeed

    init_distributed(cfg.dist_timeout_s)
    if cfg.gradient_checkpointing:
        # non-reentrant: works with ZeRO-3's parameter hooks and inputs that need no grad
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.lm.config.use_cache = False
    engine, _opt, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                              config=ds_config(cfg, lr))
    return engine
