from fractions import Fraction

import pytest

from services.verifier.answer_forms import normalize_number
from services.verifier.equivalence import fast_equivalent
from services.verifier.extract import last_boxed


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{82}", "82"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\fbox{7}", "7"),
    ("no box here", None),
    ("truncated \\boxed{12", None),
    ("\\boxed{ 5 }", "5"),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text,value", [
    ("42", Fraction(42)), ("-3", Fraction(-3)), ("0.50", Fraction(1, 2)), ("1,234", Fraction(1234)),
    ("3/4", Fraction(3, 4)), ("\\frac{3}{4}", Fraction(3, 4)), ("-\\dfrac{1}{3}", Fraction(-1, 3)),
    ("$7$", Fraction(7)), ("1/0", None), ("x+1", None), ("1,23", Fraction(123, 100)), ("1, 23", None), ("", None),
])
def test_normalize_number(text, value):
    assert normalize_number(text) == value


def test_fast_path_decides_numbers_and_defers_the_rest():
    assert fast_equivalent("0.5", "\\frac{1}{2}") is True
    assert fast_equivalent("82", "83") is False
    assert fast_equivalent("x=3", "3") is True  # an assignment answers by its value
    assert fast_equivalent("x+1", "1+x") is None  # needs the sandboxed parser


# -- extraction ---------------------------------------------------------------------------------
from services.verifier.equivalence import inequality_to_interval  # noqa: E402
from services.verifier.extract import extract_answer, extract_choice  # noqa: E402
from services.verifier.penalties import garbled_share, is_repetitive, repetition_share  # noqa: E402
from services.verifier.screening import nesting_depth, power_tower_height, screen_answer  # noqa: E402


@pytest.mark.parametrize("text,strict,expected", [
    ("so \\boxed{3}. The final answer is 4.", True, "3"),
    ("The final answer is 4.", True, None),
    ("The final answer is 4.", False, "4"),
    ("The final answer is $\\frac{1}{2}$.", False, "\\frac{1}{2}"),
    ("work\nAnswer: x=3\n", False, "x=3"),
    ("**Answer:** 12", False, "12"),
    ("nothing here", False, None),
])
def test_extract_answer(text, strict, expected):
    assert extract_answer(text, strict) == expected


@pytest.mark.parametrize("text,strict,expected", [
    ("\\boxed{B}", True, "B"), ("\\boxed{(b)}", True, "B"), ("\\boxed{\\text{(D)}}", True, "D"),
    ("\\boxed{A or B}", True, None), ("The answer is (C).", False, "C"), ("\\boxed{F}", True, None),
])
def test_extract_choice(text, strict, expected):
    assert extract_choice(text, "ABCDE", strict) == expected


@pytest.mark.parametrize("text,value", [
    ("1.5e3", Fraction(1500)), ("2.5\\times10^{-2}", Fraction(1, 40)), ("3 \\cdot 10^4", Fraction(30000)),
    ("2\\frac{1}{2}", Fraction(5, 2)), ("-1\\frac{1}{4}", Fraction(-5, 4)), ("2\\frac{5}{2}", None),
    ("1{,}000", Fraction(1000)), ("\\left(5\\right)", None),
])
def test_normalize_more_number_forms(text, value):
    assert normalize_number(text) == value


@pytest.mark.parametrize("text,interval", [
    ("x>3", "(3,\\infty)"), ("x \\geq 3", "[3,\\infty)"), ("3<x", "(3,\\infty)"), ("x<=-1", "(-\\infty,-1]"),
    ("1\\le x<2", "[1,2)"), ("5>x\\ge 1", "[1,5)"), ("x<\\frac{1}{2}", "(-\\infty,\\frac{1}{2})"),
    ("x=3", "x=3"), ("2x>3", "2x>3"), ("(1,2)", "(1,2)"),
])
def test_inequalities_become_intervals(text, interval):
    assert inequality_to_interval(text) == interval


# -- screening and penalties --------------------------------------------------------------------
def test_nesting_and_towers():
    assert nesting_depth("{(a)[b]}") == 2 and nesting_depth("{" * 20 + "}" * 20) == 20
    assert power_tower_height("x^2") == 2 and power_tower_height("9^{9^{9}}") == 3
    assert power_tower_height("9^{9^{9^{9}}}") == 4 and power_tower_height("2+3") == 0


@pytest.mark.parametrize("answer,rejected", [
    ("\\frac{1}{2}", False), ("x^{2}+1", False), ("9^{9^{9^{9}}}", True), ("{" * 13 + "}" * 13, True),
    ("9" * 400, True), ("2^{100000}", True), ("10000!", True), ("(12345)!", True),
    ("\\binom{1000000}{3}", True), ("5!", False), ("x" * 3000, True),
    # sizes written as expressions: parsers expand them in full
    ("(10^8)!", True), ("(10^{8})!", True), ("\\left(2^{20}\\right)!", True), ("{10^{10^{10}}}!", True),
    ("\\sum_{k=1}^{10^{8}} k^k", True), ("\\prod_{k=1}^{20000} k", True), ("\\sum_k^{10^9} k", True),
    ("(n+1)!", False), ("\\sum_{k=1}^{n} k", False), ("\\sum_{k=1}^{100} k^2", False),
    ("\\frac{10!}{3!}", False), ("x != 3", False), ("1000!", True),
])
def test_screen_answer(answer, rejected):
    assert (screen_answer(answer, max_chars=2000, max_nesting=12) is not None) == rejected


def test_repetition_rule():
    assert repetition_share("a b c d a b c d a b c d", 4) > 0.5
    assert repetition_share("one two three four five six", 4) == 0
    assert is_repetitive("again and again " * 30)
    assert not is_repetitive("again and again " * 3)  # too short to judge


def test_garbled_share():
    assert garbled_share("plain ascii 1+1=2", ("LATIN",)) == 0
    assert garbled_share("\ufffd\ufffd ab", ("LATIN",)) == pytest.approx(2 / 5)
    assert garbled_share("α β γ", ("LATIN",)) == pytest.approx(3 / 5)
    assert garbled_share("α β γ", ("LATIN", "GREEK")) == 0
    assert garbled_share("x ≤ y ∑", ("LATIN",)) == 0  # math symbols are always fine


@pytest.mark.parametrize("answer,costly", [
    ("\\sum_{k=1}^{9999} k^{k}", True), ("9^{9^{9}}", True), ("(x+1)^{9999}", True), ("2^{1000}", True),
    ("\\int_0^1 x dx", True), ("5!", True), ("\\frac{d}{dx} x^2", True), ("x" * 301, True),
    ("x^{2}+1", False), ("\\frac{1}{2}", False), ("2^{10}", False), ("\\sqrt{2}", False),
    ("e^{i\\pi}", False), ("\\{1,2\\}", False), ("x^{n}", False), ("\\sin x", False),
])
def test_expensive_looking_answers_get_the_slow_lane(answer, costly):
    from services.verifier.screening import expensive_looking

    assert expensive_looking(answer) == costly


def test_numeric_magnitude_bounds_the_value_python_computes():
    """The hand-written reader against Python's own arithmetic on random small expressions: its
    log10 magnitude is an upper bound of the true one (and exact for a lone number)."""
    import math
    import random

    from services.verifier.screening import numeric_magnitude

    rng = random.Random(7)

    def expr(depth=0):
        if depth > 3 or rng.random() < 0.4:
            return rng.choice(["2.0", "3.0", "7.5", "12.0", "1.25", "100.0"])  # floats: eval stays quick
        if rng.random() < 0.2:
            return "{" + expr(depth + 1) + "}"
        if rng.random() < 0.2:  # the bound takes a divisor to be >= 1: a plain number is
            return expr(depth + 1) + "/" + rng.choice(["2.0", "12.0"])
        return expr(depth + 1) + rng.choice(["+", "-", "*", "^"]) + expr(depth + 1)

    checked = 0
    for _ in range(3000):
        e = expr()
        try:
            value = eval(e.replace("{", "(").replace("}", ")").replace("^", "**"))  # numbers >= 1 only: the bound assumes it
        except (ZeroDivisionError, OverflowError):
            continue
        if isinstance(value, complex) or abs(value) > 1e300 or "^" in e and "-" in e:  # 2^{-9}
            continue
        got = numeric_magnitude(e)
        assert got is not None, e
        assert got >= math.log10(max(abs(value), 1)) - 1e-9, e
        checked += 1
    assert checked > 2000
    assert numeric_magnitude("123456") == pytest.approx(math.log10(123456))
    assert numeric_magnitude("9" * 1000) == pytest.approx(1000)  # no float overflow
    assert numeric_magnitude("10^{10^{8}}") == pytest.approx(1e8) and numeric_magnitude("2^{10^{16}}") == math.inf
    assert numeric_magnitude("-2^{3}") == pytest.approx(math.log10(8))
    for not_numeric in ["x+1", "2 3", "(2", "2)", "()", "2^", "1.2.3", "\\sqrt{2}", "(" * 150 + "2" + ")" * 150]:
        assert numeric_magnitude(not_numeric) is None, not_numeric


def test_numeric_magnitude_is_safe_from_many_threads():
    """Scorer threads call it at once; the reader shares no state (CPython 3.11's ast module
    does, gh-106905)."""
    from concurrent.futures import ThreadPoolExecutor

    from services.verifier.screening import numeric_magnitude

    exprs = ["{" * 40 + f"{i}^{{2}}*3" + "}" * 40 for i in range(2, 400)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(numeric_magnitude, exprs * 5))
    assert got == [numeric_magnitude(e) for e in exprs] * 5
