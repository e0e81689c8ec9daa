"""Prompts from the procedural task family (``services/data/tasks.py``): the embedded default."""

from __future__ import annotations

from services.common.config import TaskConfig
from services.data.loaders import DEFAULT_FORMAT, MathProblem
from services.data.prompt_format import PromptFormat
from services.data.prompt_source import digest
from services.data.tasks import Split, make_task

# Validation problems are indexed far past evaluation's, which is what keeps the two apart for
# addition (whose held-out and validation problems share a seed)
VALIDATION_OFFSET = 1_000_000


class TaskSource:
    """The configured task's stream for one split; endless, a pure function of the index."""

    size = None

    def __init__(self, cfg: TaskConfig, split: Split = "train", fmt: PromptFormat | None = None) -> None:
        self.cfg = cfg
        self.split = split
        self.fmt = fmt or DEFAULT_FORMAT
        self.task = make_task(cfg, split)
        self.offset = VALIDATION_OFFSET if split == "validation" else 0

    def problem(self, index: int) -> MathProblem:
        p = self.task.problem(self.offset + index)
        return MathProblem(self.fmt.problem(p.text), str(p.answer), f"task:{p.family}:{self.split}",
                           self.offset + index, p.text)

    def identity(self) -> dict:
        # the prompts themselves, not the config: SFT-only task settings do not change them
        return {"kind": "task", "name": self.cfg.name, "size": None, "split": self.split,
                "digest": digest(map(self.problem, range(64)))}
