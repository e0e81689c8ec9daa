"""Math verdicts against the labelled sets in bench/data, through the real scorer and sandbox.

``math_labelled.yaml`` was written with the grading rules: every pair must keep its verdict.
``math_heldout.yaml`` was written apart from the code: there the verifier must agree with the
labels at least as often as math-verify with its default settings does on the same pairs, in
every category and overall.
"""

import pytest

from services.common.config import VerifierConfig
from services.verifier.agreement import SETS, by_category, load_cases, math_verify_verdicts, our_verdicts
from services.verifier.scoring import Scorer


@pytest.fixture(scope="module")
def scorer():
    sc = Scorer(VerifierConfig(workers=2))
    yield sc
    sc.close()


def test_every_labelled_pair_keeps_its_verdict(scorer):
    cases = load_cases(SETS["labelled"])
    assert len(cases) >= 200
    verdicts = our_verdicts(scorer, cases)
    wrong = [(c.cat, c.gold, c.response[:80], c.label) for c, v in zip(cases, verdicts) if v != c.label]
    assert not wrong, wrong


def test_heldout_agreement_at_least_math_verify_in_every_category(scorer):
    cases = load_cases(SETS["heldout"])
    assert len(cases) >= 150
    ours = by_category(cases, our_verdicts(scorer, cases))
    peer = by_category(cases, math_verify_verdicts(cases))
    behind = {cat: (ours[cat], peer[cat]) for cat in ours if ours[cat][0] < peer[cat][0]}
    assert not behind, behind
    assert ours["all"][0] / ours["all"][1] >= 0.95, ours["all"]


def test_boxed_mode_reads_no_prose(scorer):
    """The RL rule: an answer the response never boxed scores nothing, however plainly stated."""
    cases = [c for c in load_cases(SETS["labelled"]) if c.cat == "prose" and c.label]
    assert cases and not any(our_verdicts(scorer, cases, extract="boxed"))
