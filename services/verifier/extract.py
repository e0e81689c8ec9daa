"""Final-answer extraction from a chain-of-thought response."""

from __future__ import annotations

_BOX_COMMANDS = ("\\boxed", "\\fbox")


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
