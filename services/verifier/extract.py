"""Final-answer extraction from a chain-of-thought response.

Three modes. ``boxed`` (the RL rule): the last box. ``lenient`` (for outside callers whose
responses are prose): the last box, else the answer an anchor phrase announces ("the final answer
is ...", "Answer: ...", "#### ..."), else the last formula or number, whichever ends later.
``answer``: the whole response is the answer. In every mode a run of boxes (or formulas) joined
by "," / "and" / "or" -- ``\\boxed{2} and \\boxed{3}`` -- is one answer listing its parts, "2, 3".

Responses are hostile input up to 200k characters: every scan here is a single left-to-right
pass or a bounded look around a match, never a pattern that can backtrack over the whole text.
"""

from __future__ import annotations

import re

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MAX_PARTS = 10
# what may stand between two parts of one answer: "2 and 3", "x = 2 or x = 3", "1, 2, and 3"
_JOINER = re.compile(r"(?:\s|,|;|\b(?:and|or)\b|\\text\{\s*,?\s*(?:and|or)?\s*\}|\\q?quad\b|\\[,;:]|~)*"
                     r"(?:[A-Za-z](?:_\{?\w+\}?)?\s*=\s*)?", re.IGNORECASE)
_MATH_DELIMS = re.compile(r"\$\$|\\\[|\\\]|\\\(|\\\)|(?<!\\)\$")


def _close_brace(text: str, i: int, limit: int) -> int:
    """Index of the brace that closes the group opened just before ``i``; -1 if none before
    ``limit``."""
    depth = 1
    for j in range(i, limit):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return j
    return -1


def _joined(gap: str) -> bool:
    """Whether the text between two answer parts joins them into one answer."""
    if len(gap) > 80:
        return False
    gap = gap.replace("$", " ").replace("\\(", " ").replace("\\)", " ")
    return _JOINER.fullmatch(gap) is not None


def _boxes(text: str) -> list[str] | None:
    """The contents of the last run of joined boxes, in order; None without a complete last box.
    An unclosed last box (a truncated response) yields None rather than a partial answer."""
    starts = [m for m in _BOX.finditer(text)]
    if not starts:
        return None
    last = starts[-1]
    end = _close_brace(text, last.end(), len(text))
    if end < 0:
        return None
    parts = [text[last.end():end].strip()]
    next_start = last.start()
    for m in reversed(starts[:-1]):
        if len(parts) == _MAX_PARTS:
            break
        close = _close_brace(text, m.end(), next_start)  # bounded by the next box: linear overall
        if close < 0 or not _joined(text[close + 1:next_start]):
            break
        parts.append(text[m.end():close].strip())
        next_start = m.start()
    return parts[::-1]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}``, braces matched; None if absent."""
    parts = _boxes(text)
    return parts[-1] if parts else None


def _math_spans(text: str) -> list[tuple[int, int, int, int]]:
    """(start, content start, content end, end) of each ``$..$``, ``$$..$$``, ``\\(..\\)``,
    ``\\[..\\]`` in one pass. A ``$`` with no partner on its line is a currency sign."""
    spans, opened, line_end = [], None, -1
    for m in _MATH_DELIMS.finditer(text):
        tok = m.group()
        if opened is None:
            if tok in ("$", "$$", "\\(", "\\["):
                opened = m
                line_end = text.find("\n", m.end())  # once per opening: no rescans
            continue
        want = {"$": "$", "$$": "$$", "\\(": "\\)", "\\[": "\\]"}[opened.group()]
        if opened.group() == "$" and 0 <= line_end < m.start():
            opened = m if tok in ("$", "$$", "\\(", "\\[") else None  # a lone "$" was currency
            line_end = text.find("\n", m.end()) if opened is not None else -1
            continue
        if tok == want:
            spans.append((opened.start(), opened.end(), m.start(), m.end()))
            opened = None
    return spans


def _last_formula(text: str) -> tuple[list[str], int] | None:
    """The last run of joined formulas (their contents) and where it ends."""
    spans = _math_spans(text)
    if not spans:
        return None
    parts, end = [], spans[-1][3]
    nxt = None
    for span in reversed(spans):
        if nxt is not None and (len(parts) == _MAX_PARTS or not _joined(text[span[3]:nxt[0]])):
            break
        parts.append(text[span[1]:span[2]].strip())
        nxt = span
    return parts[::-1], end


# numbers in prose: thousands groups (by comma, space or thin space), decimals with a point or a
# comma, a fraction a/b, a percent sign
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:[,\u2009\u202f ]\d{3})+(?!\d)(?:\.\d+)?|\d+(?:[.,]\d+)?(?:/\d+)?"
                     r"|\.\d+)(?:\s?(?:\\?%|percent\b))?")


def _last_number(text: str) -> tuple[str, int] | None:
    last = None
    for match in _NUMBER.finditer(text):
        last = match
    return (last.group().rstrip(","), last.end()) if last else None


_ANCHOR = re.compile(r"final answer|the answer|answer[ \t]*:|^[ \t]*####", re.IGNORECASE | re.MULTILINE)
_AFTER_ANCHOR = re.compile(r"[\s*:]*(?:(?:is|was|would be|will be|=)(?![a-zA-Z])[\s*:]*)?")
_VERB = re.compile(r"[\s*]*(?::|is\b|was\b|would be\b|will be\b|=)")
_WORD = re.compile(r"(?<!\\)\b[A-Za-z]{3,}\b")


def _announced(text: str) -> str | None:
    """The answer after the last anchor phrase, up to the end of its sentence or line."""
    anchors = list(_ANCHOR.finditer(text))
    for anchor in reversed(anchors[-5:]):
        i = anchor.end()
        if anchor.group().lower() == "the answer" and not _VERB.match(text, i):
            continue  # "to find the answer, first ...", "12 is the answer to the problem"
        i = _AFTER_ANCHOR.match(text, i).end()
        window = text[i:i + 400]
        formula = _math_spans(window)
        if formula and formula[0][0] == 0:  # the announced answer is a formula
            return window[formula[0][1]:formula[0][2]].strip()
        stop = re.search(r"\.(?:\s|$)|\n|$", window)
        phrase = window[:stop.start()].strip(" *:,")
        if not phrase:
            continue
        if not _WORD.search(phrase.replace("\\text", "").replace("\\frac", "")):
            return phrase  # reads as math: "42", "x = 3", "(C)", "3/4"
        if lead := _NUMBER.match(phrase):  # "the answer is 9, not 10 as one might guess"
            return lead.group().rstrip(",")
        number = _last_number(phrase)  # "the answer is not 3; checking again, it is 4"
        if number:
            return number[0]
        if len(phrase) <= 40:
            return phrase  # a short word answer: "Sunday"
    return None


def _strip_math(answer: str) -> str:
    answer = answer.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) > len(left) + len(right):
            answer = answer[len(left):-len(right)].strip()
    return answer


def _one(parts: list[str]) -> str | None:
    parts = [p.strip().rstrip(".").strip() for p in parts]
    parts = [p for p in parts if p]
    return ", ".join(parts) if parts else None


def extract_answer(text: str, mode: str | bool = "boxed") -> str | None:
    """The final answer under ``mode`` (boxed | lenient | answer); None if there is none. A bool
    is the older ``strict`` flag: True is boxed, False lenient."""
    if isinstance(mode, bool):
        mode = "boxed" if mode else "lenient"
    if mode == "answer":
        return _strip_math(text) or None
    boxes = _boxes(text)
    if boxes is not None or mode == "boxed":
        return _one(boxes) if boxes is not None else None
    announced = _announced(text)
    if announced is not None:
        return _one([_strip_math(announced)])
    formula, number = _last_formula(text), _last_number(text)
    if formula and (number is None or number[1] <= formula[1]):
        return _one(formula[0])
    return _one([number[0]]) if number else None


def extract_choice(text: str, choices: str = "ABCDE", mode: str | bool = "boxed") -> str | None:
    """A multiple-choice letter from what ``extract_answer`` finds under ``mode``."""
    candidate = extract_answer(text, mode)
    if candidate is None:
        return None
    letters = re.findall(rf"(?<![A-Za-z])([{choices}{choices.lower()}])(?![A-Za-z])",
                         candidate.replace("\\text", " ").replace("\\textbf", " "))
    distinct = {x.upper() for x in letters}
    return distinct.pop() if len(distinct) == 1 else None
