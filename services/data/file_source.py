"""Prompts from a dataset file the user brings, reshuffled every epoch (``data.train``)."""

from __future__ import annotations

import random
from pathlib import Path

from services.data.loaders import MathProblem, load_problems
from services.data.prompt_format import PromptFormat
from services.data.prompt_source import digest


class FileSource:
    """The problems of one file or ``datasets`` directory, loaded (and checked: a record with no
    usable gold answer fails here, with its file and record number) once.

    With a ``seed``, epoch ``e`` visits every problem once in the order of a permutation drawn
    from ``(seed, e)``; without one, in file order (evaluation, so that reports line up with
    the file)."""

    def __init__(self, path: str | Path, split: str | None = None, seed: int | None = 0,
                 limit: int | None = None, fmt: PromptFormat | None = None) -> None:
        self.path = Path(path)
        self.problems = load_problems(self.path, split, limit, fmt)
        self.size = len(self.problems)
        self.seed = seed
        self.name = self.problems[0].source
        self._orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        if self.seed is None:
            return list(range(self.size))
        if epoch not in self._orders:
            if len(self._orders) > 2:  # the cursor only moves forwards: old epochs are done
                self._orders.pop(min(self._orders))
            perm = list(range(self.size))
            random.Random(f"{self.seed}:{epoch}").shuffle(perm)  # str seeds hash with sha512
            self._orders[epoch] = perm
        return self._orders[epoch]

    def problem(self, index: int) -> MathProblem:
        epoch, position = divmod(index, self.size)
        return self.problems[self.order(epoch)[position]]

    def identity(self) -> dict:
        return {"kind": "file", "name": self.name, "size": self.size, "seed": self.seed,
                "digest": digest(self.problems)}
