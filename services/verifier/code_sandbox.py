"""Code rewards: run a response's Python against tests, isolated, and judge it from outside.

One check = one fresh interpreter (``code_harness``) started through an isolation backend
(``isolation/``): it runs the code once, evaluates each test's expression and writes the values
to a pipe. The verifier reads at most ``REPORT_LIMIT`` bytes of them (the program's own stdout
and stderr go nowhere, unbuffered), takes one result per test in order (more results, or out
of order, is a tampered report: status ``error``; fewer means the program ended the check
early, and the missing tests fail), and judges each value against the test's literal itself
(``services.common.code_tests``). The reward is passed / requested
tests, in [0, 1] by construction.

Isolation level (``verifier.code_isolation``): ``required`` runs checks only under bubblewrap
and refuses them (status ``error``, with the reason) where it cannot start; ``best_effort``
falls back to a plain limited process. Every result names the level that ran.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from services.common.code_tests import BadTestForm, Check, decode_record, judge, parse_test
from services.verifier.isolation.base import Isolation, sandbox_python
from services.verifier.isolation.bubblewrap import BubblewrapIsolation
from services.verifier.isolation.process import ProcessIsolation

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
HARNESS = (Path(__file__).parent / "code_harness.py").read_text()
REPORT_LIMIT = 2**20  # bytes of results read from a check; more is an error, never buffered


def extract_code(response: str) -> str:
    """The last fenced code block, else the whole response."""
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else response


@dataclass
class CodeResult:
    status: Literal["ok", "timeout", "error"]
    passed: int = 0
    total: int = 0
    detail: str | None = None
    isolation: str | None = None  # the backend that ran the check (None: none could)
    per_test: list[bool] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


class CodeSandbox:
    def __init__(self, timeout_s: float = 10.0, memory_mb: int = 512,
                 isolation: Literal["required", "best_effort"] = "required", python: str = "") -> None:
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.level = isolation
        self.python = python  # as configured; resolved on the first check
        self._interpreter: str | None = None
        self.bubblewrap = BubblewrapIsolation()

    def backend(self) -> tuple[Isolation | None, str | None]:
        """The backend checks run under, or None and why none may."""
        why = self.bubblewrap.unavailable()
        if why is None:
            return self.bubblewrap, None
        if self.level == "best_effort":
            return ProcessIsolation(), f"weaker isolation: {why}"
        return None, f"code isolation required but unavailable: {why}"

    def run(self, code: str, tests: list[str]) -> CodeResult:
        try:
            checks = [parse_test(t) for t in tests]  # the API refuses these with a 422 already
        except BadTestForm as exc:
            return CodeResult("error", total=len(tests), detail=f"unsupported test: {exc}")
        backend, why = self.backend()
        if backend is None:
            return CodeResult("error", total=len(checks), detail=why)
        try:
            self._interpreter = self._interpreter or sandbox_python(self.python)
        except RuntimeError as exc:
            return CodeResult("error", total=len(checks), detail=str(exc))
        result = self._run(backend, self._interpreter, code, checks)
        result.isolation = backend.name
        note = f"isolation={backend.name}" + (f" ({why})" if why else "")
        result.detail = f"{note}; {result.detail}" if result.detail else note
        return result

    def _run(self, backend: Isolation, python: str, code: str, checks: list[Check]) -> CodeResult:
        total = len(checks)
        read_fd, write_fd = os.pipe()
        spec = json.dumps({"code": code, "exprs": [c.expr for c in checks], "memory_mb": self.memory_mb,
                           # the wall clock decides (a timeout); the CPU limit only backs it up
                           "cpu_s": math.ceil(self.timeout_s) + 1, "report_fd": write_fd}).encode()
        with tempfile.TemporaryDirectory(prefix="t1-code-") as workdir:
            os.chmod(workdir, 0o777)  # the process backend's cwd, for nobody
            argv, fds = backend.command([python, "-I", "-S", "-c", HARNESS])
            try:
                proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        pass_fds=(write_fd, *fds), env={"PATH": "/usr/bin:/bin"},
                                        start_new_session=True, **backend.popen_kwargs())
            except OSError as exc:
                os.close(read_fd)
                return CodeResult("error", total=total, detail=f"cannot start the sandbox: {exc}")
            finally:
                for fd in (write_fd, *fds):  # ours closed: EOF comes when the sandbox's copy closes
                    os.close(fd)
            threading.Thread(target=_feed, args=(proc, spec), daemon=True).start()
            try:
                report, why = _read_report(read_fd, time.monotonic() + self.timeout_s)
            finally:
                os.close(read_fd)
                _kill(proc)
        if why == "timeout":
            return CodeResult("timeout", total=total, detail=f"exceeded {self.timeout_s:.1f}s")
        if why is not None:
            return CodeResult("error", total=total, detail=why)
        return _judge_report(report, checks)


def _feed(proc: subprocess.Popen, spec: bytes) -> None:
    try:
        proc.stdin.write(spec)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass  # the sandbox died first; its missing report says so


def _read_report(fd: int, deadline: float) -> tuple[bytes, str | None]:
    chunks, size = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"", "timeout"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), None
        size += len(chunk)
        if size > REPORT_LIMIT:
            return b"", f"report over {REPORT_LIMIT} bytes"
        chunks.append(chunk)


def _kill(proc: subprocess.Popen) -> None:
    """The whole check, whatever state it is in (bwrap's namespace dies with it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _judge_report(report: bytes, checks: list[Check]) -> CodeResult:
    total = len(checks)
    lines = report.splitlines()
    if len(lines) > total:  # only the program can have written the extra lines
        return CodeResult("error", total=total,
                          detail=f"tampered report: {len(lines)} results for {total} tests")
    per_test, errors = [], []
    if len(lines) < total:  # it exited, crashed or hit a limit before the harness was done
        errors.append(f"the program ended the check after {len(lines)} of {total} results")
    for i, (line, check) in enumerate(zip(lines, checks)):
        try:
            index, value, error = decode_record(line)
        except Exception:  # noqa: BLE001 -- a line or value that does not decode fails its test
            per_test.append(False)
            continue
        if index != i:
            return CodeResult("error", total=total, detail=f"tampered report: line {i} is for test {index}")
        if error is not None:
            errors.append(f"test {i}: {error}")
        per_test.append(error is None and judge(check, value))
    per_test += [False] * (total - len(per_test))
    return CodeResult("ok", passed=sum(per_test), total=total, per_test=per_test,
                      detail="; ".join(errors[:3]) or None)
