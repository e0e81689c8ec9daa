"""Is an extracted answer equivalent to the gold answer?

Both sides are first reduced to what they say (``answer_forms``: units, separators, percent,
"x = 5"). Then two paths. The fast path decides plain numbers -- integers, decimals, fractions,
mixed numbers, scientific notation, percentages, decimal approximations of a fraction -- and
sets, lists, intervals, tuples and matrices of them, with exact rational arithmetic in-process; it
never parses expressions. Everything else goes to math-verify (latex2sympy2 + sympy) inside the
sandbox, because parsing and simplifying untrusted LaTeX can hang or blow up memory. Before either,
single-variable inequalities are rewritten as intervals (``x \\ge 3`` -> ``[3,\\infty)``).
"""

from __future__ import annotations

import re
from fractions import Fraction

from services.verifier.answer_forms import (
    Form,
    approximates,
    as_list,
    decimal_places,
    has_equation,
    hedged,
    last_side,
    normalize_number,
    numeric_matrix,
    rounds_to,
    split_list,
    written_form,
)

_INFINITY = {"\\infty": "inf", "+\\infty": "inf", "-\\infty": "-inf", "\\infinity": "inf"}
_LIST = re.compile(r"^(\\\{|[\[(])(.*)(\\\}|[\])])$")


def _bound(text: str) -> Fraction | str | None:
    t = text.strip()
    return _INFINITY.get(t.replace(" ", "")) or normalize_number(t)


def _collection(text: str) -> tuple[str, str, list[str]] | None:
    """``\\{1,2\\}`` / ``[1,2)`` / ``(1,2,3)`` / a bare ``1, 2`` -> (open, close, parts); a bare
    list is a set (MATH writes the roots of an equation as ``1, 2``)."""
    s = text.strip()
    m = _LIST.match(s)
    if m and "{,}" not in s:
        opening, body, closing = m.groups()
        if (opening == "\\{") != (closing == "\\}"):
            return None
        parts = split_list(body)
        if len(parts) >= 2 or opening == "\\{":
            return opening, closing, parts
    parts = split_list(s)
    return ("\\{", "\\}", parts) if len(parts) >= 2 else None


def _numeric_collection(text: str, keep_equations: bool) -> tuple[str, str, list] | None:
    c = _collection(text)
    if c is None:
        return None
    values = []
    for part in c[2]:
        form = written_form(part)
        v = _bound(form.text if keep_equations else last_side(form.text))
        if v is None or form.percent:
            return None
        values.append(v)
    return c[0], c[1], values


def _numbers_match(a: Form, av: Fraction, g: Form, gv: Fraction) -> bool:
    """Exact equality; a percent on one side may also be read as a fraction of 100 (``25\\%`` is
    25 or 0.25, never both sides divided); else a decimal answer that approximates a gold with no
    finite decimal form."""
    if a.percent and not g.percent:
        return av in (gv, gv * 100)
    if g.percent and not a.percent:
        return av in (gv, gv / 100) or approximates(a.text, av, gv / 100)
    return av == gv or approximates(a.text, av, gv)


def _forms(answer: str, gold: str) -> tuple[Form, Form]:
    """Both sides in written form, inequalities as intervals, and the answer's last side when
    the gold is not an equation ("x = 5" answers "5")."""
    g = written_form(gold)
    g = Form(as_list(g.text), g.percent)
    a = written_form(answer)
    a = Form(as_list(a.text), a.percent)
    if not has_equation(g.text):
        a = Form(last_side(a.text), a.percent)
    return (Form(inequality_to_interval(a.text), a.percent),
            Form(inequality_to_interval(g.text), g.percent))


def fast_equivalent(answer: str, gold: str) -> bool | None:
    """True/False when both sides are plain numbers, or sets, lists, intervals, tuples or matrices
    of them; None when the slow path must decide."""
    av, gv = normalize_number(answer), normalize_number(gold, decimal_comma=False)
    if av is not None and gv is not None:  # the common case, plain numbers as they stand
        return _numbers_match(Form(answer), av, Form(gold), gv)
    a, g = _forms(answer, gold)
    if hedged(a.text) and not hedged(g.text):
        return False  # "5 or more", "at most 4", "4 or five": not one answer
    # golds are read strictly (MATH writes the roots 1 and 4 as "1,4"); answers by the gold's shape
    av, gv = normalize_number(a.text), normalize_number(g.text, decimal_comma=False)
    if av is not None and gv is not None:
        return _numbers_match(a, av, g, gv)
    if gv is not None and len(split_list(a.text)) > 1:
        return False  # several answers for one number
    if av is not None and len(split_list(g.text)) > 1:
        if _collection(a.text) is None:
            return False  # one number for several answers
        av = None  # "1,5" against a list gold: read as the list it is written as
    if av is not None or gv is not None:
        return None
    ma, mg = numeric_matrix(a.text), numeric_matrix(g.text)
    if ma is not None and mg is not None:
        return ma == mg
    keep = has_equation(g.text)
    la, lg = _numeric_collection(a.text, keep), _numeric_collection(g.text, True)
    if la is None or lg is None:
        return None
    if la[:2] != lg[:2]:
        if "\\{" not in (la[0], lg[0]) and len(la[2]) == len(lg[2]) == 2:
            return False  # intervals/pairs whose endpoints differ in openness are different sets
        return None  # different shapes (set vs interval, ...): let the parser decide
    if la[0] == "\\{":  # sets: order and repetition do not matter
        return set(la[2]) == set(lg[2])
    return la[2] == lg[2]  # intervals and tuples: element-wise


_LT = {"<": "(", "\\lt": "(", "<=": "[", "\\le": "[", "\\leq": "[", "\\leqslant": "["}
_GT = {">": "(", "\\gt": "(", ">=": "[", "\\ge": "[", "\\geq": "[", "\\geqslant": "["}
_FLIP = dict(zip(_LT, _GT)) | dict(zip(_GT, _LT))  # both tables list their operators in the same order
# one pass over the text finds the operators: no pattern here can backtrack (answers and golds
# are hostile input, and this runs in the server process)
_OP = re.compile(r"<=|>=|<|>|\\(?:leqslant|geqslant|leq|geq|le|ge|lt|gt)(?![a-zA-Z])")
_VARIABLE = re.compile(r"[a-zA-Z]")


def _close(bracket: str) -> str:
    return ")" if bracket == "(" else "]"


def inequality_to_interval(text: str) -> str:
    """``x>3`` -> ``(3,\\infty)``, ``1\\le x<2`` -> ``[1,2)``; anything else unchanged."""
    if "=" in _OP.sub("", text):
        return text  # an equation, or a chain with one
    ops = list(_OP.finditer(text))
    if not 1 <= len(ops) <= 2:
        return text
    cuts = [-1, *(i for m in ops for i in (m.start(), m.end() - 1)), len(text)]
    sides = [text[cuts[i] + 1:cuts[i + 1]].strip() for i in range(0, len(cuts), 2)]
    names = [m.group() for m in ops]
    if not all(sides):
        return text
    if len(ops) == 2:
        lo, var, hi = sides
        op1, op2 = names
        if not _VARIABLE.fullmatch(var):
            return text
        if op1 in _LT and op2 in _LT:
            return f"{_LT[op1]}{lo},{hi}{_close(_LT[op2])}"
        if op1 in _GT and op2 in _GT:
            return f"{_GT[op2]}{hi},{lo}{_close(_GT[op1])}"
        return text
    (left, right), op = sides, names[0]
    if _VARIABLE.fullmatch(left):
        bound = right
    elif _VARIABLE.fullmatch(right):
        bound, op = left, _FLIP[op]  # "3 < x" reads as "x > 3"
    else:
        return text
    if op in _GT:
        return f"{_GT[op]}{bound},\\infty)"
    return f"(-\\infty,{bound}{_close(_LT[op])}"


def _decimal_verdict(answer: Form, gold_parsed) -> bool | None:
    """A decimal answer against a gold math-verify parsed to an exact real number (``\\sqrt{2}``,
    ``\\pi``, ``2\\sqrt{3}``, ``\\frac{100}{7}``): equal, or the rounding rule of
    ``approximates``; None when the gold is no such number. Decided here rather than by
    math-verify, whose float comparison rounds to six decimals (``0.0`` would equal ``e^{-20}``)."""
    import sympy

    value = normalize_number(answer.text)
    if value is None or answer.percent or decimal_places(answer.text) is None:
        return None
    expr = next((x for x in gold_parsed if isinstance(x, sympy.Expr)), None)
    if expr is None or not expr.is_number or expr.is_real is not True or expr.has(sympy.Float):
        return None
    if expr.is_rational:
        exact = Fraction(int(expr.p), int(expr.q))
        return value == exact or approximates(answer.text, value, exact)
    if expr.is_rational is not False:
        return None  # not known to be irrational: math-verify decides
    # irrational: 40 digits is far past any decimal an answer may give (screening caps lengths)
    return rounds_to(answer.text, value, Fraction(str(sympy.N(expr, 40))))


def sympy_equivalent(answer: str, gold: str) -> bool:
    """math-verify's verdict on both sides in written form (a decimal answer against an exact
    gold by the rounding rule). Runs only inside a sandbox worker process."""
    from math_verify import LatexExtractionConfig, parse, verify

    # LaTeX extraction only: math-verify's plain-expression extractor hands text to sympy's
    # parse_expr, which evaluates Python. The sandbox enforces the wall-clock limit, so
    # math-verify's own signal-based timeout is off.
    latex_only = [LatexExtractionConfig()]
    a, g = _forms(answer, gold)
    as_latex = ["$" + f.text + ("\\%" if f.percent else "") + "$" for f in (a, g)]
    answer_parsed = parse(as_latex[0], latex_only, parsing_timeout=None)
    gold_parsed = parse(as_latex[1], latex_only, parsing_timeout=None)
    if not gold_parsed or not answer_parsed:
        return False
    if (verdict := _decimal_verdict(a, gold_parsed)) is not None:
        return verdict
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))
