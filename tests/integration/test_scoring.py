"""Verdicts for every answer type the verifier claims, through the real sandbox pool."""

import pytest

from services.common.config import VerifierConfig
from services.common.verify_api import VerifyOptions
from services.verifier.scoring import Scorer


@pytest.fixture(scope="module")
def scorer():
    sc = Scorer(VerifierConfig(workers=2, timeout_s=3.0, code_timeout_s=3.0))
    yield sc
    sc.close()


EQUIVALENT = [
    # integers and decimals, thousands separators
    ("82", "82"), ("1,234", "1234"), ("1{,}234,567", "1234567"), ("3.50", "3.5"), ("-0.25", "-\\frac{1}{4}"),
    # fractions and mixed numbers
    ("\\frac{3}{4}", "0.75"), ("\\dfrac{6}{8}", "\\frac{3}{4}"), ("3/4", "\\tfrac{3}{4}"), ("2\\frac{1}{2}", "\\frac{5}{2}"),
    # percentages, degrees, units
    ("50\\%", "50"), ("90^\\circ", "90"), ("5\\text{ cm}", "5"), ("10 \\text{ meters}", "10"),
    # radicals and pi
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\frac{\\pi}{2}", "\\pi/2"), ("\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}"),
    # scientific notation
    ("1.5\\times10^{3}", "1500"), ("1.5e3", "1500"), ("2.5 \\cdot 10^{-2}", "0.025"),
    # expressions and equations
    ("x^2+2x+1", "(x+1)^2"), ("x=3", "3"), ("y = 2x+1", "2x+1"),
    # inequalities and intervals
    ("x>3", "(3,\\infty)"), ("x \\geq 3", "[3,\\infty)"), ("1 \\le x < 2", "[1,2)"), ("[1,2)", "[1,2)"),
    # sets (unordered), tuples (ordered)
    ("\\{1,2,3\\}", "\\{3,2,1\\}"), ("(1,2)", "(1,2)"),
    # matrices and complex numbers
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"), ("3+4i", "4i+3"),
]
NOT_EQUIVALENT = [
    ("81", "82"), ("1,235", "1234"), ("\\frac{3}{5}", "0.75"), ("-\\frac{1}{3}", "-0.3333"),
    ("2\\sqrt{3}", "\\sqrt{8}"), ("1.5e4", "1500"), ("x^2+1", "(x+1)^2"), ("x>3", "[3,\\infty)"),
    ("(1,2]", "[1,2)"), ("(1,2)", "(2,1)"), ("\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}",
                                             "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"), ("3-4i", "3+4i"),
]


@pytest.mark.parametrize("answer,gold", EQUIVALENT)
def test_equivalent_answers_are_correct(scorer, answer, gold):
    v = scorer.score(f"work... so \\boxed{{{answer}}}", gold)
    assert (v.status, v.correct, v.reward) == ("ok", True, 1.0), v


@pytest.mark.parametrize("answer,gold", NOT_EQUIVALENT)
def test_different_answers_are_wrong(scorer, answer, gold):
    v = scorer.score(f"\\boxed{{{answer}}}", gold)
    assert (v.status, v.correct, v.reward) == ("ok", False, 0.0), v


def test_lenient_extraction_only_when_not_strict(scorer):
    text = "We add them.\nThe final answer is 42."
    assert scorer.score(text, "42").correct is False  # RL setting: boxed only
    assert scorer.score(text, "42", options=VerifyOptions(strict=False)).correct is True
    assert scorer.score("Answer: $\\frac{1}{2}$", "0.5", options=VerifyOptions(strict=False)).correct
    assert scorer.score(text, "42", options=VerifyOptions(extract="lenient")).correct is True
    assert scorer.score(text, "42", options=VerifyOptions(strict=False, extract="boxed")).correct is False


def test_the_whole_response_as_the_answer(scorer):
    """extract=answer: an outside caller sends only the answer, no box, no prose."""
    answer = VerifyOptions(extract="answer")
    assert scorer.score("$\\frac{1}{2}$", "0.5", options=answer).correct is True
    assert scorer.score(" 1/2 ", "\\frac{1}{2}", options=answer).correct is True
    assert scorer.score("0.5", "1/2").correct is False  # the default (boxed) finds no answer there
    v = scorer.score("the answer is 3", "3", options=answer)
    assert v.correct is False and v.extracted == "the answer is 3"  # the text itself, not a search
    assert scorer.score("   ", "3", options=answer).detail == "no final answer found"


@pytest.mark.parametrize("response,correct", [
    ("The answer is \\boxed{C}", True), ("\\boxed{(C)}", True), ("\\boxed{\\text{C}}", True),
    ("\\boxed{B}", False), ("\\boxed{C or D}", False), ("no box, answer C", False),
])
def test_multiple_choice(scorer, response, correct):
    assert scorer.score(response, "C", task="multiple_choice").correct is correct


def test_truncated_response_is_penalised_even_with_a_right_box(scorer):
    v = scorer.score("\\boxed{82}", "82", options=VerifyOptions(finish_reason="length"))
    assert v.correct is False and v.reward == -1.0 and v.components["truncated"] == 1.0


def test_repetitive_response_is_penalised(scorer):
    loop = "let me check again the sum " * 20
    v = scorer.score(loop + "\\boxed{82}", "82")
    assert v.components["repetitive"] == 1.0 and v.reward == -1.0 and v.correct is False
    ok = scorer.score("7+5=12 carry 1; 3+4+1=8; check 82-45=37 ok \\boxed{82}", "82")
    assert ok.components["repetitive"] == 0.0 and ok.reward == 1.0


def test_garbled_response_is_penalised(scorer):
    v = scorer.score("\u0f00\u16a0\u2d30" * 20 + "\\boxed{82}", "82")
    assert v.components["garbled"] == 1.0 and v.reward == -1.0
    fine = scorer.score("Сумма равна 82, α+β, 数学 \\boxed{82}", "82")
    assert fine.components["garbled"] == 0.0 and fine.correct


def test_python_task_reward_is_the_fraction_of_tests_passed(scorer):
    response = "```python\ndef add(a, b):\n    return a + b\n```"
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 5", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]
    v = scorer.score(response, "", task="python", options=VerifyOptions(tests=tests))
    assert v.status == "ok" and v.reward == 0.75 and v.correct is False and v.extracted == "3/4 tests"
    assert v.detail == "isolation=bubblewrap"  # the level that ran, on every python verdict
    v = scorer.score(response, "", task="python", options=VerifyOptions(tests=tests[:1]))
    assert v.correct is True and v.reward == 1.0


def test_python_task_hang_is_a_timeout(scorer):
    v = scorer.score("```python\nwhile True: pass\n```", "", task="python",
                     options=VerifyOptions(tests=["assert f() == 1"]))
    assert v.status == "timeout" and v.reward == 0.0 and "isolation=bubblewrap" in v.detail


def test_cheap_answers_are_answered_without_the_sandbox_and_costly_ones_in_their_own_lane(scorer):
    """A batch mixing fast-path answers, an ordinary symbolic one and an expensive-looking one:
    the fast ones never reach a sandbox, the symbolic one goes to the main pool and the costly
    one to the slow lane, and every verdict is still right."""
    items = [(f"so \\boxed{{{n}}}", str(n), "math", VerifyOptions()) for n in range(6)]
    items.append(("so \\boxed{2x+3}", "3+2x", "math", VerifyOptions()))
    items.append(("so \\boxed{\\sum_{k=1}^{3} k}", "6", "math", VerifyOptions()))
    calls, main_before, slow_before = scorer.sandbox_calls, scorer.pool.size, scorer.slow_pool.size
    lanes = [scorer._slow_lane(*item) for item in items]
    assert lanes == [False] * 7 + [True]
    verdicts = scorer.score_batch(items)
    assert [v.correct for v in verdicts] == [True] * 8
    assert scorer.sandbox_calls - calls == 2  # the symbolic and the costly one only
    assert (scorer.pool.size, scorer.slow_pool.size) == (main_before, slow_before) == (2, 1)


def test_an_outside_callers_gold_is_screened_and_routed_like_an_answer(scorer):
    """The REST gold is caller input too: an absurd one is refused as an error (not a wrong
    answer) before any parser sees it, and an expensive-looking one takes the slow lane."""
    v = scorer.score("so \\boxed{3}", "9^{9^{9^{9}}}")
    assert v.status == "error" and "gold rejected before parsing: power tower" in v.detail
    assert not v.correct and v.reward == 0.0
    assert scorer._slow_lane("so \\boxed{x+1}", "\\sum_{k=1}^{3} x", "math", VerifyOptions())
    assert not scorer._slow_lane("so \\boxed{x+1}", "1+x", "math", VerifyOptions())
