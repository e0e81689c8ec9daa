"""Final-answer extraction from a chain-of-thought response."""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# "The final answer is 42." / "the answer is: $x=3$" -- up to the end of the line or sentence
_FINAL_ANSWER = re.compile(r"(?:final answer|the answer)\s*(?:is)?\s*:?\s*(.+?)\s*(?:\.\s|\.?$)",
                           re.IGNORECASE | re.MULTILINE)
_ANSWER_LINE = re.compile(r"^\s*\**answer\s*:\s*\**\s*(.+?)\s*\.?\s*$", re.IGNORECASE | re.MULTILINE)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}``, braces matched; None if absent.

    An unclosed box (a truncated response) yields None rather than a partial answer.
    """
    best_start = -1
    for cmd in _BOX_COMMANDS:
        best_start = max(best_start, text.rfind(cmd + "{"))
    if best_start < 0:
        return None
    i = text.index("{", best_start) + 1
    depth = 1
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def _strip_math(answer: str) -> str:
    answer = answer.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) > len(left) + len(right):
            answer = answer[len(left):-len(right)].strip()
    return answer


def extract_answer(text: str, mode: str | bool = "boxed") -> str | None:
    """The final answer. ``boxed`` (the RL rule): the last box. ``lenient``: the last box, else a
    'final answer is ...' / 'Answer: ...' phrase. ``answer``: the whole response is the answer
    (outside callers who send only the answer), less surrounding math delimiters. A bool is the
    older ``strict`` flag: True is boxed, False lenient."""
    if isinstance(mode, bool):
        mode = "boxed" if mode else "lenient"
    if mode == "answer":
        return _strip_math(text) or None
    boxed = last_boxed(text)
    if boxed is not None or mode == "boxed":
        return boxed
    for pattern in (_ANSWER_LINE, _FINAL_ANSWER):
        matches = pattern.findall(text)
        if matches:
            return _strip_math(matches[-1]) or None
    return None


def extract_choice(text: str, choices: str = "ABCDE", mode: str | bool = "boxed") -> str | None:
    """A multiple-choice letter from what ``extract_answer`` finds under ``mode``."""
    candidate = extract_answer(text, mode)
    if candidate is None:
        return None
    letters = re.findall(rf"(?<![A-Za-z])([{choices}{choices.lower()}])(?![A-Za-z])",
                         candidate.replace("\\text", " ").replace("\\textbf", " "))
    distinct = {x.upper() for x in letters}
    return distinct.pop() if len(distinct) == 1 else None
