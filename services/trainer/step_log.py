"""Step records to TensorBoard (always, rank 0) and Weights & Biases (only when asked for and
installed). Redis keeps the canonical record; these are views of it for humans."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def scalars(record: dict) -> dict[str, float]:
    """Every numeric field (bools as 0/1) except the step itself, which is the x axis."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float))}


class StepLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, wandb_project: str | None = None,
                 config: dict | None = None, prefix: str = "train") -> None:
        self.prefix = prefix  # the tags' section: train/... for RL steps, sft/... for SFT
        self.tb = None
        self.wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # a pinned dependency, but logging must never stop training
                log.warning("tensorboard is not installed: no event files")
            else:
                self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if wandb_project:
            if importlib.util.find_spec("wandb") is None:
                log.warning("trainer.wandb_project is set but wandb is not installed: not logging to it")
            else:
                import wandb

                self.wandb = wandb.init(project=wandb_project, dir=str(run_dir), config=config,
                                        resume="allow")

    def log(self, record: dict) -> None:
        step = int(record["step"])
        values = scalars(record)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{self.prefix}/{k}", v, step)
            self.tb.flush()  # a crash must not lose committed steps' scalars
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
