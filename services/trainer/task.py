"""A procedural math task: multi-digit addition, with T1-style chain-of-thought for SFT.

Prompts are a pure function of (seed, index), so the feeder's dataset cursor is just an
integer and a resumed run regenerates exactly the prompts it would have sent.

The SFT traces follow T1's shape at toy scale: work digit by digit, propose an answer,
verify it by subtraction, and -- in a share of traces -- propose a wrong answer first,
notice the failed check, and correct it (trial and error + self-verification).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    index: int
    operands: tuple[int, ...]

    @property
    def answer(self) -> int:
        return sum(self.operands)

    @property
    def prompt(self) -> str:
        return "Q:" + "+".join(str(x) for x in self.operands) + "\nA:"


class AdditionTask:
    def __init__(self, digits: int = 2, operands: int = 2, seed: int = 1234) -> None:
        if digits < 1 or operands < 2:
            raise ValueError("addition needs digits >= 1 and operands >= 2")
        self.digits = digits
        self.operands = operands
        self.seed = seed

    def problem(self, index: int) -> Problem:
        rng = random.Random(f"{self.seed}:{index}")
        lo = 10 ** (self.digits - 1) if self.digits > 1 else 0
        hi = 10**self.digits - 1
        return Problem(index, tuple(rng.randint(lo, hi) for _ in range(self.operands)))

    def cot(self, problem: Problem, rng: random.Random, p_error: float = 0.3) -> str:
        """A trial-and-error / self-verification trace ending in ``\\boxed{answer}``."""
        ops = problem.operands
        steps, carry = [], 0
        width = max(len(str(x)) for x in ops)
        for pos in range(width):
            col = [(x // 10**pos) % 10 for x in ops]
            total = sum(col) + carry
            terms = "+".join(str(d) for d in col) + (f"+{carry}" if carry else "")
            steps.append(f"{terms}={total}")
            carry = total // 10
        work = ";".join(steps)
        answer = problem.answer
        rest = "+".join(str(x) for x in ops[1:])
        parts = [work]
        if rng.random() < p_error:
            wrong = answer + rng.choice([-10, 10, -1, 1, -100, 100])
            if wrong >= 0:
                parts.append(f"try {wrong}:{wrong}-{rest}={wrong - sum(ops[1:])} no")
        parts.append(f"try {answer}:{answer}-{rest}={ops[0]} ok")
        return " ".join(parts) + f" \\boxed{{{answer}}}"
