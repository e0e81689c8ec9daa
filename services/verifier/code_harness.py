"""Runs inside the sandbox, as ``python -I -S -c <this file's text>``: limits itself, runs the
submitted code once, then evaluates each test's expression and writes its value (or the
exception's type) as one JSON line to the report descriptor.

Nothing here is trusted: the program runs in this interpreter and can rewrite any of it. The
verifier only reads *values* from the report and judges them itself (``services.common.code_tests``), so a
rewritten harness gains nothing it could not gain by computing the right values. Standard
library only; no project imports (the sandbox sees the interpreter, not the project).
"""

import json
import os
import resource
import sys


def encode(v, depth=0):
    """Builtin data as tagged JSON; anything else raises TypeError (the test fails)."""
    if depth > 50:
        raise TypeError("value nested too deeply")
    t = type(v)
    if v is None:
        return ["none"]
    if t is bool:
        return ["bool", v]
    if t is int:
        return ["int", str(v)]
    if t is float:
        return ["float", repr(v)]
    if t is complex:
        return ["complex", [repr(v.real), repr(v.imag)]]
    if t is str:
        return ["str", v]
    if t is bytes:
        return ["bytes", v.hex()]
    if t in (list, tuple, set, frozenset):
        return [t.__name__, [encode(x, depth + 1) for x in v]]
    if t is dict:
        return ["dict", [["tuple", [encode(k, depth + 1), encode(x, depth + 1)]] for k, x in v.items()]]
    raise TypeError(f"a {t.__name__} is not plain data")


def main():
    spec = json.loads(sys.stdin.read())
    report = os.fdopen(spec["report_fd"], "w")
    mem = spec["memory_mb"] * 2**20
    for res, limit in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, spec["cpu_s"]),
                       (resource.RLIMIT_FSIZE, 2**20), (resource.RLIMIT_NOFILE, 32),
                       # no process of its own: a fork bomb's first fork fails (as a non-root uid)
                       (resource.RLIMIT_NPROC, 0)):
        resource.setrlimit(res, (limit, limit))
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(spec["code"], "<response>", "exec"), namespace)
        error = None
    except BaseException as exc:  # noqa: B036 -- SystemExit from the program is a failure too
        error = type(exc).__name__
    for i, expr in enumerate(spec["exprs"]):
        if error is not None:
            rec = {"i": i, "error": f"the code raised {error}"}
        else:
            try:
                rec = {"i": i, "v": encode(eval(compile(expr, "<test>", "eval"), dict(namespace)))}
            except BaseException as exc:  # noqa: B036
                rec = {"i": i, "error": type(exc).__name__}
        report.write(json.dumps(rec) + "\n")
        report.flush()


if __name__ == "__main__":
    main()
