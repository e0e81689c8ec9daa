"""T1's penalties on malformed responses: truncated, repetitive, garbled.

Each is a separate reward component; the scorer combines them with the configured rule.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter


def repetition_share(text: str, n: int) -> float:
    """Share of word n-grams that repeat an earlier one (0 = none repeated, ~1 = one loop)."""
    words = text.split()
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    repeats = sum(c - 1 for c in counts.values())
    return repeats / len(grams)


def is_repetitive(text: str, n: int = 4, max_share: float = 0.5, min_words: int = 24) -> bool:
    return len(text.split()) >= min_words and repetition_share(text, n) > max_share


_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def garbled_share(text: str, scripts: tuple[str, ...]) -> float:
    """Share of characters outside ASCII, whitespace and the allowed scripts/math symbols."""
    if not text:
        return 0.0
    if text.isascii():  # the common case, at C speed: only control characters are garbled
        return len(_ASCII_CONTROL.findall(text)) / len(text)
    # each distinct character is judged once: a 200k-character response has few of them
    return sum(n for ch, n in Counter(text).items() if _garbled(ch, scripts)) / len(text)


@functools.lru_cache(maxsize=65536)
def _garbled(ch: str, scripts: tuple[str, ...]) -> bool:
    if ch.isascii():
        return not (ch.isprintable() or ch in "\n\t\r")
    cat = unicodedata.category(ch)
    if cat.startswith("C") or ch == "\ufffd":  # control, unassigned, replacement characters
        return True
    if cat in ("Sm", "Zs", "Pd", "Pi", "Pf", "Po"):  # math symbols, spaces, punctuation
        return False
    name = unicodedata.name(ch, "")
    return not any(name.startswith(script) for script in scripts)
