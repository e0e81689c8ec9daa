"""Procedural math tasks with T1-style chain-of-thought for SFT: a small family.

- ``addition``: multi-digit addition (the demo's default);
- ``fractions``: ``a/b + c/d`` or ``a/b - c/d``, gold the reduced fraction in LaTeX (``\\frac{5}{6}``,
  ``-\\frac{7}{12}``, or an integer);
- ``linear``: ``a x + b = d`` or ``a x + b = c x + d`` with an integer solution, gold that x;
- ``mix``: a deterministic weighted mixture of the three.

Prompts are a pure function of (seed, index), so the feeder's dataset cursor is just an
integer and a resumed run regenerates exactly the prompts it would have sent. For every problem,
``str(problem.answer)`` is the gold answer the verifier compares with.

Splits: fractions and linear split their problem *space* by a hash of the prompt text into
``HELDOUT_MOD`` buckets: one is held out for evaluation, one for validation (choosing when SFT
has plateaued), the rest is for training. A training stream (any seed, any index: SFT, RL)
never yields a held-out or validation problem, and each of those streams yields only its own
bucket, so evaluation never sees a problem that was trained on or used to pick a checkpoint. Addition keeps its historical behaviour:
held-out prompts come from a separate seed only, so in its small space (8100 two-digit sums)
they can coincide with training prompts.

The SFT traces follow T1's shape at toy scale: work step by step, propose an answer, verify it
by an independent computation, and -- in a share of traces -- propose a wrong answer first,
notice the failed check, and correct it (trial and error + self-verification).
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Literal, Protocol, TypeVar, get_args

from services.common.config import LinearCheck, LinearRetry, TaskConfig

FAMILIES = ("addition", "fractions", "linear")
HELDOUT_MOD = 8
Split = Literal["train", "heldout", "validation"]
_BUCKETS: dict[str, set[int]] = {"heldout": {0}, "validation": {1}, "train": set(range(2, HELDOUT_MOD))}


class _Prompted:
    @property
    def prompt(self) -> str:
        """The default plain prompt (``Q:{problem}\\nA:``); the split is drawn on it, so it stays
        this shape whatever a run's ``prompt`` section says."""
        return f"Q:{self.text}\nA:"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Problem(_Prompted):
    """An addition problem."""

    family: ClassVar[str] = "addition"
    index: int
    operands: tuple[int, ...]

    @property
    def answer(self) -> int:
        return sum(self.operands)

    @property
    def text(self) -> str:
        return "+".join(str(x) for x in self.operands)



@dataclass(frozen=True)
class FractionProblem(_Prompted):
    """``a/b op c/d`` with ``op`` one of ``+``/``-``."""

    family: ClassVar[str] = "fractions"
    index: int
    a: int
    b: int
    op: str
    c: int
    d: int

    @property
    def value(self) -> Fraction:
        left, right = Fraction(self.a, self.b), Fraction(self.c, self.d)
        return left + right if self.op == "+" else left - right

    @property
    def answer(self) -> str:
        return latex(self.value)

    @property
    def text(self) -> str:
        return f"{self.a}/{self.b}{self.op}{self.c}/{self.d}"



@dataclass(frozen=True)
class LinearProblem(_Prompted):
    """``a x + b = c x + d`` (``c == 0``: one-sided, ``a x + b = d``) with solution ``x``."""

    family: ClassVar[str] = "linear"
    index: int
    a: int
    b: int
    c: int
    d: int
    x: int

    @property
    def answer(self) -> int:
        return self.x

    @property
    def text(self) -> str:
        right = f"{self.c}x{self.d:+d}" if self.c else str(self.d)
        return f"{self.a}x{self.b:+d}={right}"



AnyProblem = Problem | FractionProblem | LinearProblem
P = TypeVar("P", FractionProblem, LinearProblem)


class Task(Protocol):
    def problem(self, index: int) -> AnyProblem: ...

    def cot(self, problem, rng: random.Random, p_error: float | None = None) -> str: ...


def latex(value: Fraction) -> str:
    """The gold form: an integer, or ``\\frac{p}{q}`` in lowest terms with the sign in front."""
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _plain(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _reduced(num: int, den: int) -> str:
    """``"=p/q"`` when ``num/den`` reduces (or is an integer), else nothing."""
    value = Fraction(num, den)
    return "" if value.denominator == den else f"={_plain(value)}"


def _operand(n: int) -> str:
    """A factor as written after ``*``: negatives in parentheses (``7*(-3)``)."""
    return f"({n})" if n < 0 else str(n)


def split_of(prompt: str) -> Split:
    bucket = zlib.crc32(prompt.encode()) % HELDOUT_MOD
    return next(name for name, buckets in _BUCKETS.items() if bucket in buckets)  # type: ignore[return-value]


def _draw(rng: random.Random, make: Callable[[random.Random], P], split: Split) -> P:
    """Draw until the problem falls in the requested split (rejection keeps it a pure function)."""
    while True:
        problem = make(rng)
        if split_of(problem.prompt) == split:
            return problem


class AdditionTask:
    def __init__(self, digits: int = 2, operands: int = 2, seed: int = 1234,
                 wrong_first_share: float = 0.3) -> None:
        if digits < 1 or operands < 2:
            raise ValueError("addition needs digits >= 1 and operands >= 2")
        self.digits = digits
        self.operands = operands
        self.seed = seed
        self.wrong_first_share = wrong_first_share

    def problem(self, index: int) -> Problem:
        rng = random.Random(f"{self.seed}:{index}")
        lo = 10 ** (self.digits - 1) if self.digits > 1 else 0
        hi = 10**self.digits - 1
        return Problem(index, tuple(rng.randint(lo, hi) for _ in range(self.operands)))

    def cot(self, problem: Problem, rng: random.Random, p_error: float | None = None) -> str:
        """A trial-and-error / self-verification trace ending in ``\\boxed{answer}``."""
        p_error = self.wrong_first_share if p_error is None else p_error
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


class FractionsTask:
    """Proper fractions with denominators 2..max_den; the result may be negative or improper."""

    def __init__(self, max_den: int = 9, seed: int = 1234, split: Split = "train",
                 wrong_first_share: float = 0.3) -> None:
        if max_den < 2:
            raise ValueError("fractions need max_den >= 2")
        self.max_den = max_den
        self.seed = seed
        self.split = split
        self.wrong_first_share = wrong_first_share

    def problem(self, index: int) -> FractionProblem:
        def make(rng: random.Random) -> FractionProblem:
            b, d = rng.randint(2, self.max_den), rng.randint(2, self.max_den)
            return FractionProblem(index, rng.randint(1, b - 1), b, rng.choice("+-"),
                                   rng.randint(1, d - 1), d)
        return _draw(random.Random(f"{self.seed}:fractions:{index}"), make, self.split)

    def cot(self, problem: FractionProblem, rng: random.Random, p_error: float | None = None) -> str:
        """Least common denominator, then a check that recomputes with the product of the
        denominators (cross-multiplying) and compares the reduced values."""
        p_error = self.wrong_first_share if p_error is None else p_error
        a, b, op, c, d = problem.a, problem.b, problem.op, problem.c, problem.d
        sign = 1 if op == "+" else -1
        lcd = math.lcm(b, d)
        num_a, num_c = a * lcd // b, c * lcd // d
        num = num_a + sign * num_c
        head = f"{num_a}/{lcd}{op}{num_c}/{lcd}="
        cross = a * d + sign * c * b
        check = f"check ({a}*{d}{op}{c}*{b})/{b * d}={cross}/{b * d}{_reduced(cross, b * d)}"
        if rng.random() < p_error:
            slip = num + rng.choice([-1, 1])  # a slip in the numerator sum
            # the corrected sum agrees with the check, whose reduced value is the answer
            trace = f"{head}{slip}/{lcd} {check} not {slip}/{lcd} no; {num_a}{op}{num_c}={num} ok"
        else:
            trace = f"{head}{num}/{lcd}{_reduced(num, lcd)} {check} ok"
        return f"{trace} \\boxed{{{problem.answer}}}"


class LinearTask:
    """``a x + b = d`` (or, in a share ``two_sided``, ``a x + b = c x + d`` with 2 <= c < a)
    with 2 <= a <= max_coef, |x| <= max_value and 1 <= |b| <= max_value; d follows from x."""

    def __init__(self, max_coef: int = 9, max_value: int = 9, two_sided: float = 0.3,
                 seed: int = 1234, split: Split = "train", wrong_first_share: float = 0.3,
                 check: LinearCheck = "compact", retry: LinearRetry = "division",
                 retry_fails: float = 0.0) -> None:
        if max_value < 1 or max_coef < (3 if two_sided else 2):
            raise ValueError("linear needs max_value >= 1 and max_coef >= 2 (3 when two-sided)")
        if check not in get_args(LinearCheck):
            raise ValueError(f"linear check must be one of {get_args(LinearCheck)}, not {check!r}")
        if retry not in get_args(LinearRetry):
            raise ValueError(f"linear retry must be one of {get_args(LinearRetry)}, not {retry!r}")
        if not 0.0 <= retry_fails <= 1.0:
            raise ValueError(f"linear retry_fails is a share in [0, 1], not {retry_fails!r}")
        self.max_coef = max_coef
        self.max_value = max_value
        self.two_sided = two_sided
        self.seed = seed
        self.split = split
        self.wrong_first_share = wrong_first_share
        self.check = check
        self.redo = retry == "redo" or check == "stepwise"
        self.retry_fails = retry_fails

    def problem(self, index: int) -> LinearProblem:
        def make(rng: random.Random) -> LinearProblem:
            m = self.max_value
            two_sided = rng.random() < self.two_sided
            a = rng.randint(3 if two_sided else 2, self.max_coef)
            c = rng.randint(2, a - 1) if two_sided else 0
            x = rng.randint(-m, m)
            b = rng.choice([v for v in range(-m, m + 1) if v])
            return LinearProblem(index, a, b, c, (a - c) * x + b, x)
        return _draw(random.Random(f"{self.seed}:linear:{index}"), make, self.split)

    def _wrong_attempts(self, k: int, rhs: int, x: int, rng: random.Random) -> list[tuple[int, int]]:
        """(written right-hand side, x) of each failed attempt before the right one: a slip in
        the division, or (redo) in the subtraction, kept divisible by k; in a share
        ``retry_fails`` a second failed attempt with another x follows the first."""
        def slip() -> tuple[int, int]:
            if not self.redo:
                return rhs, x + rng.choice([-2, -1, 1, 2])
            delta = rng.choice([-1, 1])
            if rng.random() < 0.5:
                return rhs + delta * k, x + delta
            return rhs, x + rng.choice([-2, -1, 1, 2])

        wrong = [slip()]
        if self.retry_fails and rng.random() < self.retry_fails:
            second = slip()
            while second[1] == wrong[0][1]:
                second = slip()
            wrong.append(second)
        return wrong

    def cot(self, problem: LinearProblem, rng: random.Random, p_error: float | None = None) -> str:
        """Collect x on the left, divide, then substitute x back into both sides."""
        p_error = self.wrong_first_share if p_error is None else p_error
        if self.check == "stepwise":
            return self._stepwise(problem, rng.random() < p_error, rng)
        a, b, c, d, x = problem.a, problem.b, problem.c, problem.d, problem.x
        k, rhs = a - c, d - b

        def work(rhs_written: int) -> str:
            return f"{k}x={d}{-b:+d}={rhs_written}"

        def attempt(rhs_written: int, guess: int) -> str:
            g = _operand(guess)
            left = a * guess + b
            if c:  # both sides are evaluated: two different values name the mismatch
                right = c * guess + d
                sides = f"{a}*{g}{b:+d}={left} {c}*{g}{d:+d}={right}"
                if self.check == "compare":
                    sides += f" {left} vs {right}"
                verdict = "ok" if left == right else "no"
            else:
                sides = f"{a}*{g}{b:+d}={left}"
                if self.check == "compare":
                    sides, verdict = f"{sides} vs {d}", "ok" if left == d else "no"
                else:
                    verdict = "ok" if left == d else f"not {d} no"
            head = f"{work(rhs_written)} " if self.redo else ""
            return f"{head}x={rhs_written}/{k}={guess} check {sides} {verdict}"

        wrong = self._wrong_attempts(k, rhs, x, rng) if rng.random() < p_error else []
        parts = [] if self.redo else [work(rhs)]
        parts += [attempt(r, g) + ";" for r, g in wrong]
        parts.append(attempt(rhs, x))
        return " ".join(parts) + f" \\boxed{{{x}}}"

    def _stepwise(self, problem: LinearProblem, wrong_first: bool, rng: random.Random) -> str:
        """Each check step is one operation (a product, then a sum), and the verdict follows the
        two numbers it compares, so it can be read off the text rather than recalled; a wrong
        first attempt slips in the subtraction or the division and the retry redoes both."""
        a, b, c, d, x = problem.a, problem.b, problem.c, problem.d, problem.x
        k, rhs = a - c, d - b

        def side(coef: int, guess: int, const: int) -> tuple[str, int]:
            product = coef * guess
            return f"{coef}*{_operand(guess)}={product} {product}{const:+d}={product + const}", product + const

        def attempt(rhs_written: int, guess: int) -> str:
            left_text, left = side(a, guess, b)
            if c:
                right_text, right = side(c, guess, d)
                steps, target = f"{left_text} {right_text} {left}", right
            else:
                steps, target = left_text, d
            verdict = "ok" if left == target else "no"
            return (f"{k}x={d}{-b:+d}={rhs_written} x={rhs_written}/{k}={guess} "
                    f"check {steps} vs {target} {verdict}")

        wrong = self._wrong_attempts(k, rhs, x, rng) if wrong_first else []
        parts = [attempt(r, g) + ";" for r, g in wrong]
        parts.append(attempt(rhs, x))
        return " ".join(parts) + f" \\boxed{{{x}}}"


class MixTask:
    """Each index picks a family by weight (a pure function of seed and index), then takes
    that family's problem at the same index."""

    def __init__(self, tasks: dict[str, Task], weights: dict[str, float], seed: int) -> None:
        if any(w < 0 for w in weights.values()) or not sum(weights.values()):
            raise ValueError(f"mix weights must be >= 0 with a positive sum: {weights}")
        self.tasks = tasks
        self.names = [n for n in FAMILIES if weights.get(n, 0) > 0]  # fixed order, not dict order
        self.weights = [weights[n] for n in self.names]
        self.seed = seed

    def problem(self, index: int) -> AnyProblem:
        rng = random.Random(f"{self.seed}:mix:{index}")
        return self.tasks[rng.choices(self.names, self.weights)[0]].problem(index)

    def cot(self, problem: AnyProblem, rng: random.Random, p_error: float | None = None) -> str:
        return self.tasks[problem.family].cot(problem, rng, p_error)


def make_task(cfg: TaskConfig, split: Split = "train") -> Task:
    """The configured task's stream for ``split``: training (seed ``cfg.seed``), held-out or
    validation (seed ``eval_seed``; validation callers index it apart from evaluation's indices,
    which is what separates the two for addition)."""
    seed = cfg.seed if split == "train" else cfg.eval_seed
    share = cfg.wrong_first_share

    def family(name: str) -> Task:
        if name == "addition":
            return AdditionTask(cfg.digits, cfg.operands, seed, share)
        if name == "fractions":
            return FractionsTask(cfg.fraction_max_den, seed, split, share)
        return LinearTask(cfg.linear_max_coef, cfg.linear_max_value, cfg.linear_two_sided,
                          seed, split, share, cfg.linear_check, cfg.linear_retry,
                          cfg.linear_retry_fails)

    if cfg.name == "mix":
        tasks = {n: family(n) for n, w in cfg.mix_weights.items() if w > 0}
        return MixTask(tasks, cfg.mix_weights, seed)
    return family(cfg.name)
