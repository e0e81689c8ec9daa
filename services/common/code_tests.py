"""The python task's tests, judged outside the submitted program.

A program that runs in the same interpreter as its test harness can make the harness say
anything (rewrite builtins, print a look-alike report, ``os._exit(0)``), so no pass/fail bit it
produces can be trusted. Here the program's side only *evaluates* each test's expression and
sends back the value as plain data; the comparison with the test's expected literal happens in
the verifier, which the program never reaches. To forge a pass, a program would have to send
the right value -- which is what solving the task means.

So a test is one ``assert`` of a form whose expected side is a literal:

    assert E == L      assert L == E      assert E != L      assert E < L  (<=, >, >=)
    assert E           assert not E       assert E is None / is not None / is True / is False
    assert E in L      assert E not in L
    assert math.isclose(E, L[, rel_tol=.., abs_tol=..])     assert abs(E - L) < T  (or <=)

``E`` is any expression (evaluated in the sandbox); ``L`` and ``T`` are Python literals. Values
travel as tagged JSON of builtin data types only (no object of the program's own classes, whose
``__eq__`` would run in the verifier); anything else fails its test.
"""

from __future__ import annotations

import ast
import json
import math
import threading
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["eq", "ne", "lt", "le", "gt", "ge", "truthy", "falsy", "is_none", "is_not_none", "is_true", "is_false",
               "in", "not_in", "isclose", "abs_lt", "abs_le"]

_FORMS = ("assert E == L, assert L == E, assert E != L, assert E < L (<=, >, >=), assert E, assert not E, assert E is None "
          "/ is not None / is True / is False, assert E in L, assert E not in L, assert "
          "math.isclose(E, L, ...), assert abs(E - L) < T")
MAX_VALUE_DEPTH = 50
MAX_INT_DIGITS = 4300  # Python's own default limit for int <-> str


# CPython 3.11's ast module keeps its recursion counter per interpreter, not per thread: two
# threads parsing at once can fail with "AST constructor recursion depth mismatch" (gh-106905).
# Tests are parsed while requests are validated, on several threads; a test is at most 10000
# characters, so holding the lock is brief.
_AST_LOCK = threading.Lock()


class BadTestForm(ValueError):
    pass


@dataclass(frozen=True)
class Check:
    expr: str  # evaluated in the sandbox
    kind: Kind
    expected: Any = None  # the literal L
    rel_tol: float = 1e-9
    abs_tol: float = 0.0


def _literal(node: ast.AST) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _is_name(node: ast.AST, *dotted: str) -> bool:
    if len(dotted) == 1:
        return isinstance(node, ast.Name) and node.id == dotted[0]
    return (isinstance(node, ast.Attribute) and node.attr == dotted[-1]
            and _is_name(node.value, *dotted[:-1]))


def _is_abs_diff(node: ast.AST) -> bool:
    """``abs(A - B)``"""
    return (isinstance(node, ast.Call) and _is_name(node.func, "abs") and len(node.args) == 1
            and not node.keywords and isinstance(node.args[0], ast.BinOp)
            and isinstance(node.args[0].op, ast.Sub))


def parse_test(source: str) -> Check:
    """One test string as a ``Check``; ``BadTestForm`` (a one-line reason) if it has none of
    the forms above."""
    try:
        with _AST_LOCK:
            tree = ast.parse(source.strip(), mode="exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise BadTestForm(f"not valid Python: {exc}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise BadTestForm(f"a test is one assert statement, one of: {_FORMS}")
    test = tree.body[0].test
    src = ast.unparse
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        (lit_l, val_l), (lit_r, val_r) = _literal(left), _literal(right)
        if isinstance(op, (ast.Eq, ast.NotEq)) and lit_r != lit_l:
            expr, value = (src(left), val_r) if lit_r else (src(right), val_l)
            return Check(expr, "eq" if isinstance(op, ast.Eq) else "ne", value)
        order = {ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge"}.get(type(op))
        if order and lit_r and not lit_l and not _is_abs_diff(left):
            return Check(src(left), order, val_r)
        if isinstance(op, (ast.In, ast.NotIn)) and lit_r and not lit_l:
            return Check(src(left), "in" if isinstance(op, ast.In) else "not_in", val_r)
        if isinstance(op, (ast.Is, ast.IsNot)) and isinstance(right, ast.Constant) \
                and any(right.value is c for c in (None, True, False)) and not lit_l:
            if isinstance(op, ast.IsNot):
                if right.value is None:
                    return Check(src(left), "is_not_none")
            else:
                return Check(src(left), {None: "is_none", True: "is_true", False: "is_false"}[right.value])
        if isinstance(op, (ast.Lt, ast.LtE)) and lit_r and _is_abs_diff(left):
            diff = left.args[0]
            lit_b, target = _literal(diff.right)
            if lit_b and not _literal(diff.left)[0] and isinstance(val_r, (int, float)):
                return Check(src(diff.left), "abs_lt" if isinstance(op, ast.Lt) else "abs_le",
                             target, abs_tol=float(val_r))
    if isinstance(test, ast.Call) and _is_name(test.func, "math", "isclose") and len(test.args) == 2:
        (lit_a, _), (lit_b, target) = _literal(test.args[0]), _literal(test.args[1])
        tols = {}
        for kw in test.keywords:
            ok, v = _literal(kw.value)
            if kw.arg not in ("rel_tol", "abs_tol") or not ok or not isinstance(v, (int, float)):
                raise BadTestForm("math.isclose takes only literal rel_tol= and abs_tol=")
            tols[kw.arg] = float(v)
        if lit_b and not lit_a:
            return Check(src(test.args[0]), "isclose", target, tols.get("rel_tol", 1e-9),
                         tols.get("abs_tol", 0.0))
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and not _literal(test.operand)[0]:
        return Check(src(test.operand), "falsy")
    if not _literal(test)[0] and not isinstance(test, ast.Compare):
        return Check(src(test), "truthy")
    raise BadTestForm(f"unsupported test form (the expected side must be a literal): {_FORMS}")


# -- values: tagged JSON of builtin data, decoded without running anything of the program's ----
def decode(node: Any, depth: int = 0) -> Any:
    """A value as the sandbox's harness encoded it (``code_harness.encode``). Raises ValueError
    on anything malformed: a forged or exotic value fails its test."""
    if depth > MAX_VALUE_DEPTH or not isinstance(node, list) or not node or not isinstance(node[0], str):
        raise ValueError("malformed value")
    tag, args = node[0], node[1:]
    if tag == "none" and not args:
        return None
    if len(args) != 1:
        raise ValueError("malformed value")
    (arg,) = args
    if tag == "bool" and isinstance(arg, bool):
        return arg
    if tag == "int" and isinstance(arg, str) and len(arg) <= MAX_INT_DIGITS + 1:
        return int(arg)
    if tag == "float" and isinstance(arg, str) and len(arg) <= 40:
        return float(arg)
    if tag == "complex" and isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, str) for x in arg):
        return complex(float(arg[0]), float(arg[1]))
    if tag == "str" and isinstance(arg, str):
        return arg
    if tag == "bytes" and isinstance(arg, str):
        return bytes.fromhex(arg)
    if isinstance(arg, list):
        items = [decode(x, depth + 1) for x in arg]
        if tag == "list":
            return items
        if tag == "tuple":
            return tuple(items)
        if tag == "set":
            return set(items)
        if tag == "frozenset":
            return frozenset(items)
        if tag == "dict" and all(isinstance(x, tuple) and len(x) == 2 for x in items):
            return dict(items)
    raise ValueError("malformed value")


def judge(check: Check, value: Any) -> bool:
    """Whether ``value`` (decoded) passes ``check``: plain builtin operations on builtin data."""
    try:
        k = check.kind
        if k == "eq":
            return bool(value == check.expected)
        if k == "ne":
            return bool(value != check.expected)
        if k == "lt":
            return bool(value < check.expected)
        if k == "le":
            return bool(value <= check.expected)
        if k == "gt":
            return bool(value > check.expected)
        if k == "ge":
            return bool(value >= check.expected)
        if k == "truthy":
            return bool(value)
        if k == "falsy":
            return not value
        if k == "is_none":
            return value is None
        if k == "is_not_none":
            return value is not None
        if k == "is_true":
            return value is True
        if k == "is_false":
            return value is False
        if k == "in":
            return value in check.expected
        if k == "not_in":
            return value not in check.expected
        if k == "isclose":
            return math.isclose(value, check.expected, rel_tol=check.rel_tol, abs_tol=check.abs_tol)
        if k == "abs_lt":
            return abs(value - check.expected) < check.abs_tol
        if k == "abs_le":
            return abs(value - check.expected) <= check.abs_tol
    except (TypeError, ValueError, OverflowError, RecursionError):
        return False
    raise AssertionError(f"unknown check kind {check.kind}")


def decode_record(line: bytes) -> tuple[int, Any, str | None]:
    """One report line from the harness: (test index, decoded value or None, error or None)."""
    rec = json.loads(line)
    if not isinstance(rec, dict) or not isinstance(rec.get("i"), int):
        raise ValueError("malformed report line")
    if "error" in rec:
        return rec["i"], None, str(rec["error"])[:200]
    return rec["i"], decode(rec["v"]), None
