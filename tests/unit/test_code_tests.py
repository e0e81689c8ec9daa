"""The python task's test forms, and values judged outside the program."""

import json
import math

import pytest

from services.common.code_tests import BadTestForm, Check, decode, decode_record, judge, parse_test
from services.verifier.code_harness import encode


@pytest.mark.parametrize("src,kind,expected", [
    ("assert add(2, 3) == 5", "eq", 5),
    ("assert 5 == add(2, 3)", "eq", 5),
    ("assert f(1) != [1, 2]", "ne", [1, 2]),
    ("assert f(1) < 3", "lt", 3),
    ("assert f(1) >= -2.5", "ge", -2.5),
    ("assert is_prime(7)", "truthy", None),
    ("assert not is_prime(8)", "falsy", None),
    ("assert f() is None", "is_none", None),
    ("assert f() is not None", "is_not_none", None),
    ("assert f() is True", "is_true", None),
    ("assert f() is False", "is_false", None),
    ("assert f() in ((1, 2), (2, 1))", "in", ((1, 2), (2, 1))),
    ("assert f() not in {1, 2}", "not_in", {1, 2}),
    ("assert math.isclose(f(), 0.5, rel_tol=1e-3)", "isclose", 0.5),
    ("assert abs(f() - 3.14) < 0.01", "abs_lt", 3.14),
    ("assert abs(f() - 3) <= 1", "abs_le", 3),
    ("assert f(1) == {'a': [1, (2, 3)]}, 'message'", "eq", {"a": [1, (2, 3)]}),
])
def test_supported_forms(src, kind, expected):
    c = parse_test(src)
    assert c.kind == kind and c.expected == expected
    assert "==" not in c.expr or kind == "truthy"  # only the expression goes to the sandbox


@pytest.mark.parametrize("src", [
    "assert f(1) == g(1)",        # no literal side: the program would judge itself
    "assert 1 == 1",              # nothing of the program's
    "assert f() is 0",            # `is` only with None / True / False
    "x = f()\nassert x == 1",     # one assert only
    "print(f())",
    "assert f() ==",
    "assert math.isclose(f(), 1, rel_tol=tol)",
    "assert f() < g()",
])
def test_unsupported_forms_are_refused(src):
    with pytest.raises(BadTestForm):
        parse_test(src)


@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2**200, 0.1, float("inf"), 1 - 2j, "é", b"\x00\xff", [1, [2]], (1, (2,)),
    {1, 2}, frozenset({3}), {"a": (1, None), 2: [b"x"]},
])
def test_values_round_trip_with_their_types(value):
    back = decode(json.loads(json.dumps(encode(value))))
    assert back == value and type(back) is type(value)


def test_nan_round_trips():
    assert math.isnan(decode(json.loads(json.dumps(encode(float("nan"))))))


@pytest.mark.parametrize("value", [object(), type("I", (int,), {})(3), [1, {2: object()}], print])
def test_non_data_values_cannot_be_encoded(value):
    with pytest.raises(TypeError):
        encode(value)


@pytest.mark.parametrize("node", [
    [], ["int"], ["int", 5], ["int", "1" * 5000], ["float", 1.0], ["eval", "1"], ["set", [["list", []]]],
    ["dict", [["list", [["int", "1"], ["int", "2"]]]]], "x", ["bytes", "zz"], ["none", 1],
    ["list", ["list", []], ["list", []]],
])
def test_malformed_values_are_refused(node):
    with pytest.raises((ValueError, TypeError)):
        decode(node)


def test_deep_values_are_refused_not_recursed():
    node = ["list", []]
    for _ in range(200):
        node = ["list", [node]]
    with pytest.raises(ValueError):
        decode(node)


def test_judging_uses_the_literal_and_builtin_semantics():
    assert judge(Check("f()", "eq", 5), 5) and not judge(Check("f()", "eq", 5), 4)
    assert not judge(Check("f()", "eq", (1, 2)), [1, 2])  # a tuple is not a list
    assert judge(Check("f()", "isclose", 1.0, rel_tol=1e-6), 1.0 + 1e-9)
    assert not judge(Check("f()", "lt", 3), "a")  # TypeError: the test fails, nothing raises
    assert judge(Check("f()", "abs_lt", 3.14, abs_tol=0.01), 3.141)
    assert not judge(Check("f()", "is_true", None), 1)


def test_report_records():
    assert decode_record(b'{"i": 2, "v": ["int", "5"]}') == (2, 5, None)
    assert decode_record(b'{"i": 0, "error": "NameError"}') == (0, None, "NameError")
    with pytest.raises(ValueError):
        decode_record(b'{"v": ["int", "5"]}')
