"""Cheap checks on an extracted answer before anything parses it.

Parsing and simplifying untrusted LaTeX can hang or exhaust memory. The sandbox bounds the damage
(hard kill, rlimits); these checks avoid spending a sandbox worker's whole timeout on answers that
are absurd on their face. A rejected answer is a verdict (wrong), with the reason in ``detail``.
"""

from __future__ import annotations

import functools
import math
import re

_OPEN, _CLOSE = "{([", "})]"
_BIG_FACTORIAL = re.compile(r"(\d{4,})\s*!|\\?\(\s*(\d{4,})\s*\\?\)\s*!")
_BIG_BINOM = re.compile(r"\\[dt]?binom\{\s*(\d{6,})")
_HUGE_LITERAL = re.compile(r"\d{301,}")
_BIG_EXPONENT = re.compile(r"\^\s*\{?\s*(\d{5,})")


_MAX_FACTORIAL = 1000
_MAX_TERMS = 10_000
_BIG_SUM = re.compile(r"\\(?:sum|prod)\s*_\s*(?:\{[^{}]*\}|\S)\s*\^\s*")


_OPERAND_REACH = 200  # an operand is looked for this far back: one scan per "!" stays bounded


def _group_before(text: str, end: int) -> str | None:
    """The operand that ends just before ``end``: a digit run, or a bracketed group
    (``(...)``, ``{...}``, ``[...]``, ``\\left(...\\right)``) that opens within
    _OPERAND_REACH characters (a longer one is not judged here; it looks expensive and takes the
    slow lane)."""
    floor = max(-1, end - 1 - _OPERAND_REACH)
    i = end - 1
    while i >= 0 and text[i] == " ":
        i -= 1
    if i < 0:
        return None
    if text[i].isdigit():
        j = i
        while j > floor and (text[j].isdigit() or text[j] == "."):
            j -= 1
        return text[j + 1:i + 1]
    if text[i] in _CLOSE:
        depth, j = 0, i
        while j > floor:
            if text[j] in _CLOSE:
                depth += 1
            elif text[j] in _OPEN:
                depth -= 1
                if depth == 0:
                    return text[j:i + 1]
            j -= 1
    return None


def _group_after(text: str, start: int) -> str | None:
    """The operand that starts at ``start``: ``{...}`` or a single character."""
    if start >= len(text):
        return None
    if text[start] != "{":
        return text[start]
    depth = 0
    for j in range(start, len(text)):
        depth += text[j] == "{"
        depth -= text[j] == "}"
        if depth == 0:
            return text[start:j + 1]
    return None


_TOKEN = re.compile(r"\s*(\d+\.?\d*|\.\d+|\*\*|[-+*/()])")
_MAX_NESTING = 100  # Python's own parser refuses deeper brackets; so do we


class _NotNumeric(ValueError):
    pass


def _digits_magnitude(number: str) -> float:
    """log10 of max(|number|, 1), from its digits when it is too long for a float."""
    whole = number.split(".")[0].lstrip("0")
    if len(whole) < 300:
        return math.log10(max(float(number), 1.0))
    return math.log10(float(whole[:17])) + len(whole) - 17


class _MagnitudeReader:
    """Recursive descent over digits, + - * / ** and brackets, with Python's precedence (``**``
    binds tighter than a unary sign on its left and is right-associative). Each rule returns the
    log10 magnitude of its value, an upper bound. Written by hand, not with ``ast``: the verifier
    calls it from scorer threads, and CPython 3.11's ``ast`` module is not thread-safe
    (gh-106905, "AST constructor recursion depth mismatch")."""

    def __init__(self, text: str):
        self.tokens, pos = [], 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                if text[pos:].strip():
                    raise _NotNumeric(text[pos:pos + 10])
                break
            self.tokens.append(m.group(1))
            pos = m.end()
        self.i = 0
        self.depth = 0

    def _peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self) -> str:
        tok = self._peek()
        if tok is None:
            raise _NotNumeric("ends early")
        self.i += 1
        return tok

    def read(self) -> float:
        value = self._sum()
        if self._peek() is not None:
            raise _NotNumeric(self._peek())
        return value

    def _sum(self) -> float:
        value = self._product()
        while self._peek() in ("+", "-"):
            self._take()
            value = max(value, self._product()) + 0.31  # at most twice the larger
        return value

    def _product(self) -> float:
        value = self._signed()
        while self._peek() in ("*", "/"):
            op = self._take()
            right = self._signed()
            value = value + right if op == "*" else value
        return value

    def _signed(self) -> float:
        while self._peek() in ("+", "-"):  # a sign leaves the magnitude alone
            self._take()
        return self._power()

    def _power(self) -> float:
        base = self._atom()
        if self._peek() != "**":
            return base
        self._take()
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise _NotNumeric("nested too deep")
        exponent = self._signed()  # right-associative: 2**3**2 is 2**(3**2)
        self.depth -= 1
        return math.inf if exponent > 15 else base * 10 ** exponent

    def _atom(self) -> float:
        tok = self._take()
        if tok == "(":
            self.depth += 1
            if self.depth > _MAX_NESTING:
                raise _NotNumeric("nested too deep")
            value = self._sum()
            if self._take() != ")":
                raise _NotNumeric("unclosed bracket")
            self.depth -= 1
            return value
        if tok[0].isdigit() or tok[0] == ".":
            return _digits_magnitude(tok)
        raise _NotNumeric(tok)


def numeric_magnitude(latex: str) -> float | None:
    """log10 of |value| of a purely numeric LaTeX expression (digits, + - * / ^, brackets),
    computed on magnitudes only, so ``10^{10^{8}}`` costs nothing; None when it is not purely
    numeric (a symbol, a function) and so not ours to judge."""
    s = latex.replace("\\left", "").replace("\\right", "").replace("\\cdot", "*").replace("\\times", "*")
    s = s.replace("{", "(").replace("}", ")").replace("[", "(").replace("]", ")").replace("^", "**")
    if not s.strip() or re.search(r"[^0-9.+\-*/() ]", s):
        return None
    try:
        return _MagnitudeReader(s).read()
    except (_NotNumeric, OverflowError, RecursionError):
        return None


def oversized_operation(answer: str) -> str | None:
    """A factorial of a number over 1000 (``(10^8)!``) or a sum/product of over 10000 terms
    (``\\sum_{k=1}^{10^8}``), however the number is written: parsers expand these in full."""
    for m in re.finditer(r"!(?!=)", answer):
        operand = _group_before(answer, m.start())
        size = numeric_magnitude(operand) if operand else None
        if size is not None and size > math.log10(_MAX_FACTORIAL):
            return f"factorial of a number over {_MAX_FACTORIAL}"
    for m in _BIG_SUM.finditer(answer):
        bound = _group_after(answer, m.end())
        size = numeric_magnitude(bound) if bound else None
        if size is not None and size > math.log10(_MAX_TERMS):
            return f"sum or product of more than {_MAX_TERMS} terms"
    return None


def nesting_depth(text: str) -> int:
    depth = best = 0
    for ch in text:
        if ch in _OPEN:
            depth += 1
            best = max(best, depth)
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
    return best


def power_tower_height(text: str) -> int:
    """Longest chain of nested exponents, e.g. ``9^{9^{9}}`` -> 3."""
    best, stack = 0, []  # stack[i] is True when that brace group is an exponent
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "^":
            j = i + 1
            while j < len(text) and text[j] == " ":
                j += 1
            in_exp = sum(stack)
            if j < len(text) and text[j] == "{":
                stack.append(True)
                best = max(best, in_exp + 2)
                i = j + 1
                continue
            best = max(best, in_exp + 2)
        elif ch == "{":
            stack.append(False)
        elif ch == "}" and stack:
            stack.pop()
        i += 1
    return best


@functools.lru_cache(maxsize=8192)  # a prompt's K samples share a gold
def screen_answer(answer: str, max_chars: int, max_nesting: int, max_tower: int = 3) -> str | None:
    """None if the answer may be parsed; otherwise why not."""
    if len(answer) > max_chars:
        return f"answer longer than {max_chars} characters"
    if nesting_depth(answer) > max_nesting:
        return f"answer nested deeper than {max_nesting} levels"
    if power_tower_height(answer) > max_tower:
        return f"power tower higher than {max_tower}"
    if _HUGE_LITERAL.search(answer):
        return "number literal longer than 300 digits"
    if _BIG_EXPONENT.search(answer):
        return "exponent literal of 5 or more digits"
    if _BIG_FACTORIAL.search(answer):
        return "factorial of a 4+ digit number"
    if _BIG_BINOM.search(answer):
        return "binomial of a 6+ digit number"
    return oversized_operation(answer)


_COSTLY = re.compile(r"\\(?:sum|prod|int|iint|oint|lim)(?![a-zA-Z])|!(?!=)|\\binom|\\frac\s*\{\s*d")
_EXPONENT = re.compile(r"\^\s*")


def expensive_looking(answer: str) -> bool:
    """Whether an answer that passed the screen may still cost a parser seconds: sums,
    products, integrals, limits, factorials, derivatives, towers, exponents of 1000 or more,
    long answers. Such answers get their own sandbox lane, so that they queue behind each
    other and not in front of ordinary answers. A heuristic on cost, not a verdict."""
    if len(answer) > 300 or _COSTLY.search(answer) or power_tower_height(answer) >= 3:
        return True
    for m in _EXPONENT.finditer(answer):
        exponent = _group_after(answer, m.end())
        size = numeric_magnitude(exponent) if exponent else None
        if size is None and exponent and exponent.startswith("{"):
            continue  # symbolic exponent, e.g. x^{n}
        if size is not None and size >= 3:
            return True
    return False
