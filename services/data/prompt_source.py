"""Where RL prompts and evaluation problems come from: one small interface, two implementations.

- ``task_source.TaskSource``: the procedural task family (``services/data/tasks.py``), endless,
  a pure function of (seed, index); the embedded default.
- ``file_source.FileSource``: a dataset the user brings (``data.train`` / ``data.eval``: any
  format ``loaders.load_problems`` reads), in a seeded order reshuffled every epoch.

A source maps a stream position (the feeder's cursor, an integer held in Redis) to a problem,
so a restarted trainer regenerates exactly the prompts it would have sent: nothing is skipped or
repeated within an epoch. The feeder, evaluation, the demo and the difficulty filter all take
their problems from here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal, Protocol

from services.data.loaders import MathProblem

if TYPE_CHECKING:
    from services.common.config import T1Config

Use = Literal["train", "eval", "validation"]


class PromptSource(Protocol):
    # problems in one epoch; None: endless (a stream position never wraps)
    size: int | None

    def problem(self, index: int) -> MathProblem:
        """The problem at stream position ``index`` (epoch ``index // size`` for a sized source)."""
        ...

    def identity(self) -> dict:
        """What the stream is (kind, name, size, seed, content digest): a cursor saved in Redis
        only means something for the same identity."""
        ...


def prompt_source(cfg: T1Config, use: Use = "train", tokenizer=None) -> PromptSource:
    """The source the config names for ``use``: train (RL prompts), eval (reported problems) or
    validation (SFT's plateau watch; always the procedural task's validation bucket, which
    needs no file). ``data.eval`` unset falls back to the task's held-out bucket. Problems are
    formatted by the config's ``prompt`` section (``tokenizer``: the model's, for the chat style)."""
    from services.data.file_source import FileSource
    from services.data.prompt_format import PromptFormat
    from services.data.task_source import TaskSource

    data, fmt = cfg.data, PromptFormat(cfg.prompt, tokenizer)
    if use == "train" and data.train:
        return FileSource(data.train, data.train_split, seed=data.shuffle_seed, fmt=fmt)
    if use == "eval" and data.eval:
        return FileSource(data.eval, data.eval_split, seed=None, fmt=fmt)  # file order: reports line up
    split = {"train": "train", "eval": "heldout", "validation": "validation"}[use]
    return TaskSource(cfg.task, split, fmt)


def digest(problems: Iterable[MathProblem]) -> str:
    """A short digest of what the problems say (prompt and gold), for a source's identity."""
    h = hashlib.sha256()
    for p in problems:
        h.update(f"{len(p.prompt)}:{p.prompt}{len(p.gold)}:{p.gold}".encode())
    return h.hexdigest()[:16]


def first(source: PromptSource, n: int | None) -> list[MathProblem]:
    """The first ``n`` problems of the stream (all of one epoch when ``n`` is None)."""
    if n is None:
        if source.size is None:
            raise ValueError("an endless source needs a number of problems")
        n = source.size
    if source.size is not None:
        n = min(n, source.size)
    return [source.problem(i) for i in range(n)]
