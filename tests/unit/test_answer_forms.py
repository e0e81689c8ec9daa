"""How answers are written (answer_forms) and where the final answer is (extract), rule by rule.
The labelled sets in bench/data measure the same rules on whole responses
(tests/integration/test_verifier_accuracy.py)."""

from fractions import Fraction

import pytest

from services.verifier.answer_forms import (
    approximates,
    canonical_number,
    last_side,
    numeric_matrix,
    written_form,
)
from services.verifier.equivalence import fast_equivalent
from services.verifier.extract import extract_answer


@pytest.mark.parametrize("text,out,percent", [
    ("5\\text{ cm}", "5", False), ("36\\text{ in}^2", "36", False), ("7\\,\\mathrm{m/s}", "7", False),
    ("8 apples", "8", False), ("3 square units", "3", False), ("\\$12.50", "12.50", False),
    ("€40", "40", False), ("30^\\circ", "30", False), ("30^{\\circ}", "30", False), ("25\\%", "25", True),
    ("25 percent", "25", True), ("$\\dfrac{1}{2}$", "\\frac{1}{2}", False),
    # what is not a unit stays: a lone word answer, an option, a variable
    ("\\text{Sunday}", "\\text{Sunday}", False), ("\\text{(B)}", "\\text{(B)}", False), ("2x", "2x", False),
    ("\\%", "\\%", False),
])
def test_written_form_drops_units_currency_and_degrees(text, out, percent):
    form = written_form(text)
    assert (form.text, form.percent) == (out, percent)


@pytest.mark.parametrize("text,out", [
    ("1\\,000\\,000", "1000000"), ("1 000 000", "1000000"), ("12\\ 345", "12345"), ("12{,}345", "12345"),
    ("1,234.5", "1234.5"), ("3,5", "3.5"), ("3{,}14", "3.14"), ("-0,75", "-0.75"), ("2,125", "2125"),
    ("1 5", None), ("1    5", None), ("1, 5", None), ("4\u2009096", "4096"), ("- 7", "-7"),
])
def test_separators_are_read(text, out):
    assert canonical_number(text) == out


@pytest.mark.parametrize("text,out", [
    ("x = 5", "5"), ("f(2) = 4 - 5 = -1", "-1"), ("x = -2, x = 3", "-2, 3"), ("x \\le 3", "x \\le 3"),
    ("a >= b", "a >= b"), ("12,345", "12,345"), ("f(x, y) = 3", "3"),
])
def test_last_side(text, out):
    assert last_side(text) == out


@pytest.mark.parametrize("answer,gold,ok", [
    ("0.333", Fraction(1, 3), True), ("0.33", Fraction(1, 3), False), ("0.334", Fraction(1, 3), False),
    ("0.666", Fraction(2, 3), True), ("0.667", Fraction(2, 3), True), ("-0.667", Fraction(-2, 3), True),
    ("14.3", Fraction(100, 7), True), ("0.13", Fraction(1, 8), False), ("12.1", Fraction(12), False),
    ("333", Fraction(1000, 3), False),  # no decimals written: not an approximation
])
def test_approximation_rule(answer, gold, ok):
    assert approximates(answer, Fraction(answer), gold) is ok


def test_matrices_read_by_cells():
    assert numeric_matrix("\\begin{pmatrix} 1 & 2 \\\\ 3 & \\frac{1}{2} \\end{pmatrix}") == [
        [1, 2], [3, Fraction(1, 2)]]
    assert numeric_matrix("\\begin{vmatrix} 1 & 2 \\\\ 3 & 4 \\end{vmatrix}") is None  # a determinant
    assert numeric_matrix("\\begin{pmatrix} x & 2 \\end{pmatrix}") is None


@pytest.mark.parametrize("answer,gold,verdict", [
    ("25", "25\\%", True), ("0.25", "25\\%", True), ("25\\%", "0.25", True), ("20\\%", "25", False),
    ("3, 2", "2, 3", True), ("2, 4", "2, 3", False), ("\\{3, 2\\}", "2, 3", True),
    ("x = -2, x = 3", "-2, 3", True), ("(2, 1)", "(1, 2)", False),
    ("x > 3", "(3,\\infty)", True), ("x \\ge 3", "(3,\\infty)", False),
    ("\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", True),
    ("\\begin{pmatrix} 2 \\\\ 4 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 4 \\\\ 6 \\end{pmatrix}", False),
    ("3,5", "3.5", True), ("1,500", "1.5", False), ("\\$12.50", "12.5", True),
])
def test_fast_path_verdicts(answer, gold, verdict):
    assert fast_equivalent(answer, gold) is verdict


@pytest.mark.parametrize("answer,gold,verdict", [
    # a hedge is not an answer; a list joined by words is a list
    ("5 or more", "5", False), ("5\\text{ or more}", "5", False), ("4\\text{ or five}", "4", False),
    ("B \\text{ (or C)}", "\\text{(B)}", False), ("x = 3 \\text{ or } x = 5", "5", False),
    ("x = 3 \\text{ or } x = 5", "3, 5", True), ("x_1=-2 \\quad x_2=3", "-2, 3", True),
    ("x \\not= 5", "5", None), ("4 \\approx 5", "4", False), ("\\approx 0.333", "\\frac{1}{3}", True),
    # percent: one side's reading, never both divided
    ("0.25\\%", "25\\%", False), ("50\\%", "0.5", True), ("33.3\\%", "\\frac{1}{3}", False),
    # golds are read strictly, answers by the gold's shape
    ("-1.4", "-1,4", False), ("-1,4", "-1,4", True), ("-1,4", "-1.4", True), ("0,125", "125", False),
    ("1,\\!000", "1000", True), ("3+4\\mathrm{i}", "7", None), ("3 \\text{ times}", "3", True),
    ("5 xy", "5", None), ("4", "-1, 4", False), ("1, 4", "4", False),
])
def test_hedges_lists_percent_and_strict_golds(answer, gold, verdict):
    assert fast_equivalent(answer, gold) is verdict


@pytest.mark.parametrize("text,mode,expected", [
    # several boxes joined by "and" / "," / "or" are one answer; a sentence between them is not
    ("The roots are \\boxed{2} and \\boxed{3}.", "boxed", "2, 3"),
    ("So $x = \\boxed{-1}$ or $x = \\boxed{4}$.", "boxed", "-1, 4"),
    ("\\boxed{-2} \\quad \\text{and} \\quad \\boxed{3}", "boxed", "-2, 3"),
    ("\\boxed{1}, \\boxed{2}, and \\boxed{3}", "boxed", "1, 2, 3"),
    ("First \\boxed{3}, but that fails. So \\boxed{5}.", "boxed", "5"),
    ("\\boxed{\\boxed{5}}", "boxed", "5"),
    # prose: the announced answer, else the last formula or number, whichever ends later
    ("Adding 20 and 22 we get 42. The answer is 44.", "lenient", "44"),
    ("The answer is not 3; checking again, it is 4.", "lenient", "4"),
    ("The answer is 9, not 10 as one might first guess.", "lenient", "9"),
    ("which is the answer. So $x = 7$.", "lenient", "x = 7"),
    ("We have $x = 3$, so the total is 15 apples.", "lenient", "15"),
    ("There are 4 096 subsets.", "lenient", "4 096"),
    ("The total comes to $18.", "lenient", "18"),
    ("Cost: $5 each\nso $x = 2$", "lenient", "x = 2"),
    ("The roots are $x = \\frac{1}{2}$ and $x = \\frac{3}{2}$.", "lenient", "x = \\frac{1}{2}, x = \\frac{3}{2}"),
    ("#### 10", "lenient", "10"),
    ("To find the answer, first note there are 3 boxes of 4, so 12 in all.", "lenient", "12"),
    ("Thus the vector is \\[\\begin{pmatrix} 3 \\\\ -1 \\end{pmatrix}.\\]", "lenient",
     "\\begin{pmatrix} 3 \\\\ -1 \\end{pmatrix}"),
    ("no answer here at all", "lenient", None),
])
def test_extraction(text, mode, expected):
    assert extract_answer(text, mode) == expected


@pytest.mark.parametrize("text,boxed,lenient", [
    ("\\boxed{" * 60_000, None, None), ("$" * 190_000, None, None),
    ("\\boxed{1}, " * 18_000, ", ".join(["1"] * 10), ", ".join(["1"] * 10)),
    ("the answer is " * 14_000, None, "the answer is"), ("1 000 " * 30_000, None, "1 000"),
    ("{" * 190_000 + "\\boxed{1}", "1", "1"), ("$x$ and " * 25_000, None, ", ".join(["x"] * 10)),
    ("\\boxed{" + "{" * 190_000 + "}", None, None), ("    \n" * 38_000, None, None),
    ("\\boxed{1}" + " " * 190_000 + "\\boxed{2}", "2", "2"), ("the answer is" + " " * 190_000, None, None),
])
def test_extraction_of_huge_hostile_responses(text, boxed, lenient):
    """Responses up to the API's 200k characters, shaped to make a backtracking scan or a
    quadratic brace match blow up; at most ten parts make one answer. (Their time is measured
    by ``t1 bench verifier``: tens of milliseconds each, 2026-12-01.)"""
    assert extract_answer(text, "boxed") == boxed
    assert extract_answer(text, "lenient") == lenient
