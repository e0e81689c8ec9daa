"""Is an extracted answer equivalent to the gold answer?

Two paths. The fast path decides plain numbers -- integers, decimals, thousands separators,
fractions, mixed numbers, scientific notation -- with exact rational arithmetic in-process; it
never parses expressions. Everything else goes to math-verify (latex2sympy2 + sympy) inside the
sandbox, because parsing and simplifying untrusted LaTeX can hang or blow up memory. Before that,
single-variable inequalities are rewritten as intervals (``x \\ge 3`` -> ``[3,\\infty)``), a form
math-verify compares.
"""

from __future__ import annotations

import re
from fractions import Fraction

_DECIMAL = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER = re.compile(rf"^{_DECIMAL}$")
_FRACTION = re.compile(r"^([+-]?\d+)/(\d+)$")
_LATEX_FRAC = re.compile(r"^([+-]?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
_MIXED = re.compile(r"^([+-]?)(\d+)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}((,|\{,\})\d{3})+(\.\d+)?$")
_SCIENTIFIC = re.compile(rf"^({_DECIMAL})(?:[eE]([+-]?\d{{1,3}})|(?:\\times|\\cdot)10\^\{{?([+-]?\d{{1,3}})\}}?)$")
_WRAPPERS = ("\\left", "\\right", "\\!", "\\,", "\\;", " ", "$")


def normalize_number(text: str) -> Fraction | None:
    """Exact value of a plain numeric answer, or None if it is anything more than a number."""
    s = text.strip()
    for w in _WRAPPERS:
        s = s.replace(w, "")
    if _THOUSANDS.match(s):
        s = s.replace("{,}", "").replace(",", "")
    try:
        if _NUMBER.match(s):
            return Fraction(s)
        if m := _FRACTION.match(s):
            return Fraction(int(m.group(1)), int(m.group(2))) if int(m.group(2)) else None
        if m := _LATEX_FRAC.match(s):
            num, den = int(m.group(2)), int(m.group(3))
            return Fraction(-num if m.group(1) == "-" else num, den) if den else None
        if m := _MIXED.match(s):
            whole, num, den = int(m.group(2)), int(m.group(3)), int(m.group(4))
            if not den or num >= den:  # "2\frac{5}{2}" is not a mixed number
                return None
            value = whole + Fraction(num, den)
            return -value if m.group(1) == "-" else value
        if m := _SCIENTIFIC.match(s):
            exponent = int(m.group(2) or m.group(3))
            return Fraction(m.group(1)) * Fraction(10) ** exponent
    except (ValueError, ZeroDivisionError):
        return None
    return None


_INFINITY = {"\\infty": "inf", "+\\infty": "inf", "-\\infty": "-inf", "\\infinity": "inf"}
_LIST = re.compile(r"^(\\\{|[\[(])(.*)(\\\}|[\])])$")


def _bound(text: str) -> Fraction | str | None:
    t = text.strip()
    return _INFINITY.get(t.replace(" ", "")) or normalize_number(t)


def _numeric_list(text: str) -> tuple[str, str, list] | None:
    """``\\{1,2\\}`` / ``[1,2)`` / ``(1,2,3)`` of plain numbers -> (open, close, values)."""
    s = text.strip().replace("\\left", "").replace("\\right", "")
    m = _LIST.match(s)
    if not m or "{,}" in s:
        return None
    opening, body, closing = m.groups()
    if (opening == "\\{") != (closing == "\\}"):
        return None
    values = [_bound(part) for part in body.split(",")]
    if len(values) < 2 or any(v is None for v in values):
        return None
    return opening, closing, values


def fast_equivalent(answer: str, gold: str) -> bool | None:
    """True/False when both sides are plain numbers, or sets/intervals/tuples of them with the
    same brackets; None when the slow path must decide."""
    a, g = normalize_number(answer), normalize_number(gold)
    if a is not None and g is not None:
        return a == g
    if a is not None or g is not None:
        return None
    la, lg = _numeric_list(answer), _numeric_list(gold)
    if la is None or lg is None:
        return None
    if la[:2] != lg[:2]:
        if "\\{" not in (la[0], lg[0]) and len(la[2]) == len(lg[2]) == 2:
            return False  # intervals/pairs whose endpoints differ in openness are different sets
        return None  # different shapes (set vs interval, ...): let the parser decide
    if la[0] == "\\{":  # sets: order and repetition do not matter
        return set(la[2]) == set(lg[2])
    return la[2] == lg[2]  # intervals and tuples: element-wise


_LT = {"<": "(", "\\lt": "(", "<=": "[", "\\le": "[", "\\leq": "[", "\\leqslant": "["}
_GT = {">": "(", "\\gt": "(", ">=": "[", "\\ge": "[", "\\geq": "[", "\\geqslant": "["}
_FLIP = dict(zip(_LT, _GT)) | dict(zip(_GT, _LT))  # both tables list their operators in the same order
_OP = r"(<=|>=|<|>|\\leqslant|\\geqslant|\\leq|\\geq|\\le|\\ge|\\lt|\\gt)"
_SIDE = r"([^<>=\\]*(?:\\(?!l[te]|g[te])[a-z]+[^<>=\\]*)*)"
_ONE = re.compile(rf"^\s*([a-zA-Z])\s*{_OP}\s*{_SIDE}\s*$")
_ONE_REV = re.compile(rf"^\s*{_SIDE}\s*{_OP}\s*([a-zA-Z])\s*$")
_TWO = re.compile(rf"^\s*{_SIDE}\s*{_OP}\s*([a-zA-Z])\s*{_OP}\s*{_SIDE}\s*$")


def _close(bracket: str) -> str:
    return ")" if bracket == "(" else "]"


def inequality_to_interval(text: str) -> str:
    """``x>3`` -> ``(3,\\infty)``, ``1\\le x<2`` -> ``[1,2)``; anything else unchanged."""
    if m := _TWO.match(text):
        lo, op1, _var, op2, hi = (g.strip() for g in m.groups())
        if op1 in _LT and op2 in _LT and lo and hi:
            return f"{_LT[op1]}{lo},{hi}{_close(_LT[op2])}"
        if op1 in _GT and op2 in _GT and lo and hi:
            return f"{_GT[op2]}{hi},{lo}{_close(_GT[op1])}"
        return text
    if m := _ONE.match(text):
        _var, op, bound = (g.strip() for g in m.groups())
    elif m := _ONE_REV.match(text):
        bound, op, _var = (g.strip() for g in m.groups())
        op = _FLIP[op]  # "3 < x" reads as "x > 3"
    else:
        return text
    if not bound:
        return text
    if op in _GT:
        return f"{_GT[op]}{bound},\\infty)"
    return f"(-\\infty,{bound}{_close(_LT[op])}"


def sympy_equivalent(answer: str, gold: str) -> bool:
    """math-verify's verdict. Runs only inside a sandbox worker process."""
    from math_verify import LatexExtractionConfig, parse, verify

    # LaTeX extraction only: math-verify's plain-expression extractor hands text to sympy's
    # parse_expr, which evaluates Python. The sandbox enforces the wall-clock limit, so
    # math-verify's own signal-based timeout is off.
    latex_only = [LatexExtractionConfig()]
    gold_parsed = parse(f"${inequality_to_interval(gold)}$", latex_only, parsing_timeout=None)
    answer_parsed = parse(f"${inequality_to_interval(answer)}$", latex_only, parsing_timeout=None)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))
