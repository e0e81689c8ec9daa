"""A pool of sandbox processes with a hard wall-clock kill.

Each check runs in a separate worker process with an address-space and a CPU rlimit. The
parent waits on the worker's pipe with a deadline; past it, the worker is SIGKILLed and
replaced. This works from any thread (no ``signal.alarm``), which matters because the REST
app and the queue worker call the pool concurrently.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import queue
import signal
import threading
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

_CTX = mp.get_context("spawn")  # no inherited threads or locks from the server process


@dataclass(frozen=True)
class SandboxResult:
    status: Literal["ok", "timeout", "error"]
    value: Any = None
    error: str | None = None


def _worker_main(conn, memory_mb: int, cpu_s: int) -> None:
    import logging as _logging
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
    _logging.disable(_logging.WARNING)  # math-verify warns on every call with timeouts off
    from services.verifier import equivalence

    functions = {"sympy_equivalent": equivalence.sympy_equivalent}
    conn.send(("ready", None))  # imports done: the parent's per-check deadline starts after this
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            name, args = conn.recv()
        except EOFError:
            return
        # RLIMIT_CPU counts the process's whole life, so each check gets a budget on top of
        # what earlier checks used; past it the kernel's SIGXCPU kills the worker.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime) + cpu_s  # ceil: never less than cpu_s left
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        try:
            conn.send(("ok", functions[name](*args)))
        except MemoryError:
            conn.send(("error", "memory limit exceeded"))
        except Exception as exc:  # a parse failure is an answer about the input, not a crash
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:300]))


class _Worker:
    def __init__(self, memory_mb: int, cpu_s: int) -> None:
        self.conn, child = _CTX.Pipe()
        self.proc = _CTX.Process(target=_worker_main, args=(child, memory_mb, cpu_s), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        if not self.ready and self.conn.poll(timeout_s):
            self.ready = self.conn.recv()[0] == "ready"
        return self.ready

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class SandboxPool:
    def __init__(self, workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 1024) -> None:
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        # The CPU budget outlasts the wall deadline, so a slow check ends as a timeout by the
        # wall clock; the rlimit is the backstop for a worker the parent cannot reach.
        self.cpu_s = math.ceil(timeout_s) + 1
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self.replaced = 0
        self.size = workers
        for _ in range(workers):
            self._spawn()

    def _spawn(self) -> None:
        w = _Worker(self.memory_mb, self.cpu_s)
        with self._lock:
            self._all.append(w)
        self._idle.put(w)

    def _retire(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            self._all.remove(w)
            self.replaced += 1
        self._spawn()

    def run(self, fn: str, *args, timeout_s: float | None = None) -> SandboxResult:
        w = self._idle.get()
        deadline = timeout_s or self.timeout_s
        try:
            if not w.wait_ready():
                raise EOFError("worker never became ready")
            w.conn.send((fn, args))
            if not w.conn.poll(deadline):
                log.warning("sandbox check exceeded %.1fs; killing worker pid %s", deadline, w.proc.pid)
                self._retire(w)
                return SandboxResult("timeout", error=f"exceeded {deadline:.1f}s")
            status, value = w.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            # The worker died (rlimit hit, segfault in a C extension): report, then replace it.
            w.proc.join(timeout=1)
            cpu_limit = w.proc.exitcode == -signal.SIGXCPU
            self._retire(w)
            if cpu_limit:
                return SandboxResult("timeout", error=f"exceeded its CPU budget of {self.cpu_s}s")
            return SandboxResult("error", error=f"sandbox worker died: {type(exc).__name__}")
        self._idle.put(w)
        if status == "ok":
            return SandboxResult("ok", value=value)
        return SandboxResult("error", error=value)

    def close(self) -> None:
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            w.kill()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
