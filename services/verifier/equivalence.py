"""Is an extracted answer equivalent to the gold answer?

Two paths. The fast path decides plain numbers (integers, decimals, thousands separators,
simple fractions) with exact rational arithmetic in-process; it never parses expressions.
Everything else goes to math-verify (latex2sympy2 + sympy) inside the sandbox, because
parsing and simplifying untrusted LaTeX can hang or blow up memory.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_FRACTION = re.compile(r"^([+-]?\d+)/(\d+)$")
_LATEX_FRAC = re.compile(r"^([+-]?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")


def normalize_number(text: str) -> Fraction | None:
    """Exact value of a plain numeric answer, or None if it is anything more than a number."""
    s = text.strip().strip("$").replace("\\!", "").replace(" ", "")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    try:
        if _NUMBER.match(s):
            return Fraction(s)
        if m := _FRACTION.match(s):
            return Fraction(int(m.group(1)), int(m.group(2))) if int(m.group(2)) else None
        if m := _LATEX_FRAC.match(s):
            num, den = int(m.group(2)), int(m.group(3))
            if den == 0:
                return None
            return Fraction(-num if m.group(1) == "-" else num, den)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def fast_equivalent(answer: str, gold: str) -> bool | None:
    """True/False when both sides are plain numbers; None when the slow path must decide."""
    a, g = normalize_number(answer), normalize_number(gold)
    if a is None or g is None:
        return None
    return a == g


def sympy_equivalent(answer: str, gold: str) -> bool:
    """math-verify's verdict. Runs only inside a sandbox worker process."""
    from math_verify import parse, verify

    # The sandbox enforces the wall-clock limit; math-verify's own signal-based timeout is off.
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    answer_parsed = parse(f"${answer}$", parsing_timeout=None)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))
