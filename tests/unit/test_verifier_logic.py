from fractions import Fraction

import pytest

from services.verifier.equivalence import fast_equivalent, normalize_number
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
    ("$7$", Fraction(7)), ("1/0", None), ("x+1", None), ("1,23", None), ("", None),
])
def test_normalize_number(text, value):
    assert normalize_number(text) == value


def test_fast_path_decides_numbers_and_defers_the_rest():
    assert fast_equivalent("0.5", "\\frac{1}{2}") is True
    assert fast_equivalent("82", "83") is False
    assert fast_equivalent("x=3", "3") is None  # needs the sandboxed parser
