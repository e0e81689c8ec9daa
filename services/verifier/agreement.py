"""Agreement of verdicts with a labelled set of (gold, response, label) pairs.

The sets live in ``bench/data``: ``math_labelled.yaml`` was written alongside the grading rules
(it is their regression set), ``math_heldout.yaml`` was written apart from the code and is used
only to measure. ``t1 bench verifier`` prints both, ours against math-verify on the same pairs.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

DATA_DIR = Path(__file__).resolve().parents[2] / "bench" / "data"
SETS = {"labelled": DATA_DIR / "math_labelled.yaml", "heldout": DATA_DIR / "math_heldout.yaml"}


@dataclass(frozen=True)
class Case:
    cat: str
    gold: str
    response: str
    label: bool


def load_cases(path: Path) -> list[Case]:
    rows = yaml.safe_load(path.read_text()) or []
    return [Case(str(r["cat"]), str(r["gold"]), str(r["response"]), bool(r["label"])) for r in rows]


def our_verdicts(scorer, cases: list[Case], extract: str = "lenient") -> list[bool]:
    from services.common.verify_api import VerifyOptions

    options = VerifyOptions(extract=extract)
    return [v.correct for v in scorer.score_batch([(c.response, c.gold, "math", options) for c in cases])]


def math_verify_verdicts(cases: list[Case]) -> list[bool]:
    """math-verify with its default settings: ``verify(parse(gold), parse(response))``. In-process,
    on our own data only (its default extraction evaluates Python through sympy)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    out = []
    for c in cases:
        try:
            out.append(bool(verify(parse(f"${c.gold}$"), parse(c.response))))
        except Exception:  # a crash on a pair is a wrong verdict, not a stop
            out.append(False)
    return out


def by_category(cases: list[Case], verdicts: list[bool]) -> dict[str, tuple[int, int]]:
    """category -> (agreeing, total), with "all" for the whole set."""
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c, v in zip(cases, verdicts, strict=True):
        for key in (c.cat, "all"):
            table[key][0] += v == c.label
            table[key][1] += 1
    return {k: (a, n) for k, (a, n) in table.items()}
