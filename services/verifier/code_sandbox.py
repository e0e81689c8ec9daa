"""Code rewards: run a response's Python against tests in a sandbox backend.

Running the submitted code is the point of this task type, so it runs only in a separate,
limited process: a fresh temp dir as cwd, an empty environment, ``python -I`` (no user site, no
env vars), rlimits on address space, CPU time, file size, open files and processes, no network
where the kernel lets us unshare it, and a hard wall-clock kill of the whole process group.
The container backend does the same through the Docker SDK on production hosts.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
_SENTINEL = "__T1_RESULTS__"

# Executed by the sandboxed interpreter. It limits itself before touching the submitted code,
# then reports one pass/fail per test on its last stdout line.
_RUNNER = r"""
import ctypes, json, os, resource, sys
spec = json.loads(sys.stdin.read())
nonce = spec.pop("nonce")
mem = spec["memory_mb"] * 2**20
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (spec["cpu_s"], spec["cpu_s"] + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
isolated = False
try:  # a private network namespace with only a down loopback: no network at all
    isolated = ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0
except Exception:
    pass
# Preloaded before the privilege drop: where the interpreter's files are not world-readable
# (a Python under /root), nobody could not import them later. In containers every module loads.
import array, bisect, cmath, collections, copy, dataclasses, datetime, decimal, enum, fractions
import functools, heapq, itertools, math, numbers, operator, random, re, statistics, string
import typing
if os.getuid() == 0:  # root ignores RLIMIT_NPROC: become nobody, so no fork/exec succeeds
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
results, error = [], None
namespace = {"__name__": "__main__"}
try:
    exec(compile(spec["code"], "<response>", "exec"), namespace)
except BaseException as exc:
    error = f"{type(exc).__name__}: {exc}"[:300]
for test in spec["tests"]:
    if error is not None:
        results.append(False)
        continue
    try:
        exec(compile(test, "<test>", "exec"), dict(namespace))
        results.append(True)
    except BaseException:
        results.append(False)
sys.stdout.write("\n" + SENTINEL + nonce + json.dumps({"results": results, "error": error, "isolated": isolated}) + "\n")
sys.stdout.flush()
""".replace("SENTINEL", repr(_SENTINEL))


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
    network_isolated: bool = False
    per_test: list[bool] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


class CodeSandbox(ABC):
    """One interface for every place submitted code may run."""

    @abstractmethod
    def run(self, code: str, tests: list[str]) -> CodeResult: ...


def _new_spec(code: str, tests: list[str], memory_mb: int, timeout_s: float) -> tuple[str, str]:
    # The per-run nonce marks the runner's own report line, so a program that prints a look-alike
    # line and exits early does not pass. (A program that digs the nonce out of the runner's
    # memory could still forge it: the sandbox protects the host, not the reward from a
    # deliberate forger; the container backend is the same in this respect.)
    nonce = secrets.token_hex(16)
    spec = {"code": code, "tests": tests, "memory_mb": memory_mb, "cpu_s": max(1, int(timeout_s)),
            "nonce": nonce}
    return json.dumps(spec), nonce


def _parse_output(stdout: str, total: int, nonce: str) -> CodeResult:
    marker = _SENTINEL + nonce
    line = next((x for x in reversed(stdout.splitlines()) if x.startswith(marker)), None)
    if line is None:
        return CodeResult("error", total=total, detail="sandboxed process ended without a report")
    report = json.loads(line[len(marker):])
    per_test = [bool(x) for x in report["results"]]
    return CodeResult("ok", passed=sum(per_test), total=total, detail=report["error"],
                      network_isolated=bool(report["isolated"]), per_test=per_test)


class LocalProcessSandbox(CodeSandbox):
    def __init__(self, timeout_s: float = 10.0, memory_mb: int = 512) -> None:
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb

    def run(self, code: str, tests: list[str]) -> CodeResult:
        spec, nonce = _new_spec(code, tests, self.memory_mb, self.timeout_s)
        with tempfile.TemporaryDirectory(prefix="t1-code-") as workdir:
            os.chmod(workdir, 0o777)  # the runner drops to nobody when started as root
            proc = subprocess.Popen([sys.executable, "-I", "-c", _RUNNER], cwd=workdir,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"},
                                    start_new_session=True, text=True)
            try:
                stdout, _ = proc.communicate(spec, timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                return CodeResult("timeout", total=len(tests), detail=f"exceeded {self.timeout_s:.1f}s")
        result = _parse_output(stdout, len(tests), nonce)
        if result.status == "error" and proc.returncode and proc.returncode < 0:
            result.detail = f"killed by signal {-proc.returncode} (resource limit)"
        return result


class DockerSandbox(CodeSandbox):
    """The same runner inside a throw-away container (``docker`` SDK), for production hosts.

    No Docker engine runs on this project's CI machines: tests cover ``container_spec`` and the
    clear error when no engine answers, not a container run.
    """

    def __init__(self, image: str = "python:3.11-slim", timeout_s: float = 10.0,
                 memory_mb: int = 512) -> None:
        self.image = image
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._client = None

    def container_spec(self, spec_json: str) -> dict:
        return {
            "image": self.image,
            "command": ["python", "-I", "-c", f"import sys, io; sys.stdin = io.StringIO({spec_json!r}); "
                                               + _RUNNER],
            "network_disabled": True,
            "mem_limit": f"{self.memory_mb}m",
            "memswap_limit": f"{self.memory_mb}m",
            "pids_limit": 16,
            "read_only": True,
            "tmpfs": {"/tmp": "size=16m"},
            "working_dir": "/tmp",
            "user": "65534:65534",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "detach": True,
        }

    def client(self):
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env(timeout=int(self.timeout_s) + 5)
                self._client.ping()
            except docker.errors.DockerException as exc:
                self._client = None
                raise RuntimeError(f"docker code sandbox: no Docker engine reachable ({exc})") from exc
        return self._client

    def run(self, code: str, tests: list[str]) -> CodeResult:
        spec, nonce = _new_spec(code, tests, self.memory_mb, self.timeout_s)
        container = self.client().containers.run(**self.container_spec(spec))
        try:
            try:
                container.wait(timeout=self.timeout_s)
            except Exception:
                return CodeResult("timeout", total=len(tests), detail=f"exceeded {self.timeout_s:.1f}s")
            return _parse_output(container.logs(stdout=True, stderr=False).decode(), len(tests), nonce)
        finally:
            container.remove(force=True)


def make_code_sandbox(backend: str, timeout_s: float, memory_mb: int, image: str) -> CodeSandbox:
    if backend == "docker":
        return DockerSandbox(image, timeout_s, memory_mb)
    return LocalProcessSandbox(timeout_s, memory_mb)
