"""How an answer is written, reduced to what it says. Both the extracted answer and the gold go
through here before anything compares them.

- units, currency and degree signs around a value are dropped (``5\\text{ cm}``, ``\\$12.50``,
  ``30^\\circ``, ``8 apples``); a percent sign is kept aside as a flag;
- numbers are read with their separators: thousands grouped by commas, spaces or thin spaces
  (``1\\,000``, ``1 000``, ``1{,}000``) and decimal commas (``3,5``, ``3{,}14``: a comma is a
  decimal comma unless exactly three digits follow it);
- ``x = 5`` / ``m + n = 64`` answer a gold with no equation by their last side;
- collections: ``\\{..\\}`` and bare lists ``1, 2`` are sets, ``(..)`` / ``[..]`` tuples or
  intervals, ``\\begin{pmatrix}..\\end{pmatrix}`` matrices.

String work only, in the server process: no parser ever runs here.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from fractions import Fraction

_SPACING = re.compile(r"(?<!\\)\\[,;: ]|~|[\u00a0\u2009\u202f]")  # "\\ " ends a matrix row
_NEGATIVE_SPACE = re.compile(r"(?<!\\)\\!")  # MATH writes thousands as 1,\!000
_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_STYLE = re.compile(r"\\(?:displaystyle|textstyle|left|right)(?![a-zA-Z])")
_SYMBOLS = {"≥": "\\ge ", "≤": "\\le ", "≠": "\\ne ", "−": "-", "×": "\\times ", "\\approx": "=", "≈": "="}
_TRAILING_DOTS = re.compile(r"(?:\\[lc]?dots|\.\.\.|…)\s*$")
_CONSTANT = re.compile(r"\\(?:mathrm|text|rm)\s*\{\s*([ie])\s*\}")  # \mathrm{i}, \mathrm{e}
# "x = -2 \text{ or } x = 3", "x_1 = 2 \quad x_2 = 3": connectives between the parts of a list
_CONNECTIVE = re.compile(r"\\text\s*\{\s*(?:,?\s*(?:or|and)|,)\s*\}|\\(?:lor|quad|qquad)(?![a-zA-Z])"
                         r"|(?<![\\a-zA-Z])(?:or|and)(?![a-zA-Z])")
# a trailing \text{cm} / \mbox{ square inches} / \mathrm{m/s}, optionally squared or cubed
_UNIT_GROUP = re.compile(r"\\(?:text|mbox|mathrm|textrm|rm|textit|mathit)\s*\{\s*([A-Za-z][A-Za-z./ ]*)\}"
                         r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*$")
# trailing words after a number or a group: "8 apples", "3 square units", "5 cm^2"
_UNIT_WORDS = re.compile(r"(?<=[\d}])\s+([A-Za-z]+\.?(?:\s+[A-Za-z]+\.?){0,3})(?:\s*\^\s*\{?[23]\}?)?\s*$")
_DEGREE = re.compile(r"\s*(?:\^\s*\{?\s*\\circ\s*\}?|°|\\degree)\s*$")
_CURRENCY = re.compile(r"^\s*(?:\\\$|\$|€|£|¥|₹|\\euro\b|USD\b|EUR\b)\s*")
_PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*\\?%\s*\}|\\?\s*percent)\s*$")
# Words that qualify or hedge an answer instead of naming its unit: "5 or more", "at most 4",
# "4 or five", "not 3". An answer holding one (where the gold does not) is wrong, and no such
# word is ever stripped as a unit.
HEDGES = frozenset("""or and more less fewer least most not no none impossible possibly maybe
    perhaps either neither nor about approximately around roughly than only exactly between plus
    minus""".split())
NUMBER_WORDS = frozenset("""zero one two three four five six seven eight nine ten eleven twelve
    thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty
    seventy eighty ninety hundred thousand million billion half third quarter""".split())
_UNIT_LETTERS = frozenset("mgshLlVWAJNK")  # one-letter units (\mathrm{m}); never i or e
_SHORT_UNITS = frozenset("m cm mm km in ft yd mi kg g mg lb lbs oz s h hr hrs ml mL L mph sq".split())
_WORD = re.compile(r"(?<![\\a-zA-Z])[A-Za-z]+(?![a-zA-Z])")
_UNIT_SPLIT = re.compile(r"[\s/.]+")


def _unit_words(words: str, plain: bool) -> bool:
    """Whether ``words`` name a unit (``cm``, ``square inches``, ``m/s``, ``apples``) rather than
    qualify the answer. Plain words (outside ``\\text{}``) need three letters or a known unit
    abbreviation, so ``5 xy`` stays an expression."""
    parts = [w for w in _UNIT_SPLIT.split(words) if w]
    for w in parts:
        low = w.lower()
        if low in HEDGES or low in NUMBER_WORDS:
            return False
        if len(w) == 1 and w not in _UNIT_LETTERS:
            return False
        if plain and len(w) < 3 and w not in _SHORT_UNITS:
            return False
    return bool(parts)


def hedged(text: str) -> bool:
    """Whether the answer holds a word that hedges or qualifies it (see HEDGES), or a number
    written as a word beside a digit ("4 or five")."""
    words = {w.lower() for w in _WORD.findall(text)}
    return bool(words & HEDGES) or (bool(words & NUMBER_WORDS) and any(c.isdigit() for c in text))


@dataclass(frozen=True)
class Form:
    text: str
    percent: bool = False


_TAIL = 80  # units, percent and degree signs are short: the suffix patterns look no further
_SUFFIX_CHARS = re.compile(r"[A-Za-z%°.…]")


def _suffix(s: str, pattern: re.Pattern) -> re.Match | None:
    """``pattern`` (anchored at the end) in ``s``, if it leaves something before it. Searched in
    the last _TAIL characters only: a search from every position of a long hostile answer would
    be quadratic."""
    start = max(0, len(s) - _TAIL)
    if not _SUFFIX_CHARS.search(s, start):
        return None  # every suffix pattern needs one of these: most answers end in digits
    m = pattern.search(s, start)
    return m if m and m.start() > 0 else None


@functools.lru_cache(maxsize=8192)  # the K samples of a prompt share a gold, and often an answer
def written_form(text: str) -> Form:
    """The answer with its delimiters, units, currency and degree sign gone; percent as a flag."""
    s = text.strip()
    for left, right in _DELIMS:
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            s = s[len(left):-len(right)].strip()
    s = _STYLE.sub("", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for symbol, latex in _SYMBOLS.items():
        s = s.replace(symbol, latex)
    s = _CONSTANT.sub(r"\1", _NEGATIVE_SPACE.sub("", s))
    s = _SPACING.sub(" ", s).strip()
    if (m := _suffix(s, _TRAILING_DOTS)) is not None:
        s = s[:m.start()]
    s = s.strip().rstrip(".").strip()
    m = _suffix(s, _PERCENT)
    percent = m is not None
    if percent:
        s = s[:m.start()].strip()
    for _ in range(2):  # "5 \text{ cm}^2", then a unit word left before it
        for pattern in (_UNIT_GROUP, _UNIT_WORDS, _DEGREE):
            m = _suffix(s, pattern)
            if m is not None and (pattern is _DEGREE
                                  or _unit_words(m.group(1), plain=pattern is _UNIT_WORDS)):
                s = s[:m.start()].strip()
    if (m := _CURRENCY.match(s)) and m.end() < len(s):
        s = s[m.end():].strip()
    return Form(s, percent)


def as_list(text: str) -> str:
    """Connectives between the parts of an answer as commas: ``x = -2 \\text{ or } x = 3`` ->
    ``x = -2 , x = 3``. Only outside brackets: the "or" of ``B \\text{ (or C)}`` is a hedge, and
    stays for ``hedged`` to see."""
    matches = list(_CONNECTIVE.finditer(text))
    if not matches:
        return text
    depth, depths = 0, []
    for ch in text:  # bracket depth before each character, one pass
        depths.append(depth)
        depth += (ch in "{([") - (ch in "})]")
    out, last = [], 0
    for m in matches:
        if depths[m.start()] == 0:
            out += [text[last:m.start()], ","]
            last = m.end()
    return "".join(out) + text[last:]


def _top_level(text: str, sep: str) -> list[int]:
    """Indices of ``sep`` outside any brackets (``\\{``, ``\\}`` count as brackets)."""
    out, depth = [], 0
    for i, ch in enumerate(text):
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append(i)
    return out


def _equals(text: str) -> list[int]:
    """Top-level ``=`` that are equations, not part of ``<=``, ``>=``, ``!=``, ``==`` or
    ``\\not=``."""
    return [i for i in _top_level(text, "=")
            if (i == 0 or text[i - 1] not in "<>!=") and (i + 1 >= len(text) or text[i + 1] != "=")
            and not _negated(text, i)]


def _negated(text: str, i: int) -> bool:
    """Whether ``\\not`` (then spaces) stands just before index ``i``. Scans back over the
    spaces only, never copies the text before ``i``: an answer of 1000 ``=`` stays linear."""
    j = i
    while j > 0 and text[j - 1].isspace():
        j -= 1
    return text.endswith("\\not", 0, j)


def has_equation(text: str) -> bool:
    return bool(_equals(text))


def last_side(text: str) -> str:
    """``x = 5`` -> ``5``, ``f(2) = 4 - 5 = -1`` -> ``-1``, each part of a list on its own
    (``x = -2, x = 3`` -> ``-2, 3``); anything without ``=`` unchanged."""
    eq = _equals(text)
    if not eq:
        return text
    parts = split_list(text)
    if len(parts) > 1:
        return ", ".join(last_side(p) for p in parts)
    return text[eq[-1] + 1:].strip()


def split_list(text: str) -> list[str]:
    """Top-level comma-separated parts; one part when there is no top-level comma."""
    cuts = _top_level(text, ",")
    bounds = [-1, *cuts, len(text)]
    return [text[a + 1:b].strip() for a, b in zip(bounds, bounds[1:])]


# -- numbers ------------------------------------------------------------------------------------
_DECIMAL = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER = re.compile(rf"^{_DECIMAL}$")
_FRACTION = re.compile(r"^([+-]?\d+)/(\d+)$")
_LATEX_FRAC = re.compile(r"^([+-]?)\\frac\{([+-]?\d+)\}\{(\d+)\}$")
_MIXED = re.compile(r"^([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$")
_THOUSANDS = re.compile(r"^[+-]?[1-9]\d{0,2}(?:(?:,|\{,\}| )\d{3})+(?:\.\d+)?$")
_DECIMAL_COMMA = re.compile(r"^([+-]?\d+)(?:,|\{,\})(\d+)$")
_SCIENTIFIC = re.compile(rf"^({_DECIMAL})(?:[eE]([+-]?\d{{1,3}})|(?:\\times|\\cdot)10\^\{{?([+-]?\d{{1,3}})\}}?)$")
_POWER_OF_TEN = re.compile(r"^10\^\{?([+-]?\d{1,3})\}?$")
_WHITESPACE = re.compile(r"\s+")
_LIST_COMMA = re.compile(r",\s")
_PLAIN_DECIMAL = re.compile(r"[+-]?\d*\.\d+")
_LOOSE_SPACE = re.compile(r"(?<!\d) | (?!\d)")  # a (single) space not between two digits


@functools.lru_cache(maxsize=16384)
def canonical_number(text: str, decimal_comma: bool = True) -> str | None:
    """The numeric text with its separators read (``1\\,000`` -> ``1000``, ``3,5`` -> ``3.5``);
    None when it is not written as a plain number. ``decimal_comma=False`` (how golds are read:
    MATH writes the roots 1 and 4 as ``1,4``) takes a comma that is not a thousands separator for
    a list."""
    s = _WHITESPACE.sub(" ", _SPACING.sub(" ", text.replace("$", ""))).strip()
    s = _STYLE.sub("", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    if _THOUSANDS.match(s):
        return s.replace("{,}", "").replace(",", "").replace(" ", "")
    if _LIST_COMMA.search(s):
        return None  # "1, 2" is a list, not a decimal comma
    s = _LOOSE_SPACE.sub("", s)
    if decimal_comma and (m := _DECIMAL_COMMA.match(s)) and (
            len(m.group(2)) != 3 or m.group(1).lstrip("+-") == "0"):  # 0,125 groups no thousands
        return f"{m.group(1)}.{m.group(2)}"
    return s if " " not in s else None


@functools.lru_cache(maxsize=16384)
def normalize_number(text: str, decimal_comma: bool = True) -> Fraction | None:
    """Exact value of a plain numeric answer, or None if it is anything more than a number."""
    s = canonical_number(text, decimal_comma)
    if s is None:
        return None
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
        if m := _POWER_OF_TEN.match(s):
            return Fraction(10) ** int(m.group(1))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def decimal_places(text: str) -> tuple[int, int] | None:
    """(decimals, significant digits) of an answer written as a decimal, e.g. ``0.333`` -> (3, 3);
    None for integers, fractions and anything else."""
    s = canonical_number(text)
    if s is None or not _PLAIN_DECIMAL.fullmatch(s):
        return None
    whole, frac = s.lstrip("+-").split(".")
    return len(frac), len((whole + frac).lstrip("0"))


def has_finite_decimal(value: Fraction) -> bool:
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


def approximates(answer_text: str, answer: Fraction, gold: Fraction) -> bool:
    """Whether a decimal answer is the gold rounded or truncated to the answer's decimals, with at
    least three significant digits, for a gold that has no finite decimal form (``0.333`` for
    1/3; never ``0.13`` for 1/8 or ``12.1`` for 12)."""
    return not has_finite_decimal(gold) and rounds_to(answer_text, answer, gold)


def rounds_to(answer_text: str, answer: Fraction, gold: Fraction) -> bool:
    """Whether ``answer`` (written ``answer_text``, at least three significant digits) is
    ``gold`` rounded or truncated to the answer's decimals."""
    places = decimal_places(answer_text)
    if places is None or places[1] < 3:
        return False
    scale = 10 ** places[0]
    magnitude = abs(gold) * scale
    truncated = Fraction(int(magnitude), scale)
    rounded = Fraction(int(magnitude + Fraction(1, 2)), scale)
    sign = -1 if gold < 0 else 1
    return answer in (sign * truncated, sign * rounded)


# -- matrices -----------------------------------------------------------------------------------
_MATRIX = re.compile(r"^\\begin\{([pbB]?matrix)\}(.*)\\end\{\1\}$", re.DOTALL)


def numeric_matrix(text: str) -> list[list[Fraction]] | None:
    """Rows of a ``pmatrix`` / ``bmatrix`` / ``matrix`` of plain numbers; None for anything else
    (a ``vmatrix`` is a determinant, not a matrix)."""
    m = _MATRIX.match(text.strip())
    if not m:
        return None
    rows = []
    for row in m.group(2).strip().split("\\\\"):
        if not row.strip():
            continue
        cells = [normalize_number(c) for c in row.split("&")]
        if any(c is None for c in cells):
            return None
        rows.append(cells)
    return rows or None
