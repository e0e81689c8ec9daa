"""Cheap checks on an extracted answer before anything parses it.

Parsing and simplifying untrusted LaTeX can hang or exhaust memory. The sandbox bounds the damage
(hard kill, rlimits); these checks avoid spending a sandbox worker's whole timeout on answers that
are absurd on their face. A rejected answer is a verdict (wrong), with the reason in ``detail``.
"""

from __future__ import annotations

import re

_OPEN, _CLOSE = "{([", "})]"
_BIG_FACTORIAL = re.compile(r"(\d{4,})\s*!|\\?\(\s*(\d{4,})\s*\\?\)\s*!")
_BIG_BINOM = re.compile(r"\\[dt]?binom\{\s*(\d{6,})")
_HUGE_LITERAL = re.compile(r"\d{301,}")
_BIG_EXPONENT = re.compile(r"\^\s*\{?\s*(\d{5,})")


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
    return None
