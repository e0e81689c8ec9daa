"""The local stack: Redis plus the three services as separate processes, supervised.

Each service runs as its own ``t1 <service>`` process in its own process group (so stopping it
also stops vLLM's engine workers and the verifier's sandbox processes). A service that dies is
restarted -- the streams hold its unfinished work -- and the whole stack is torn down cleanly on
exit, leaving no process behind: also on SIGTERM (``kill``, ``timeout``, a container stop), which
the stack turns into an exit that unwinds through ``with Stack(...)``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from services.common import streams
from services.common.config import T1Config, dump_config
from services.common.embedded_redis import EmbeddedRedis

log = logging.getLogger(__name__)

SERVICES = ("verifier", "generator", "trainer")


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


@dataclass
class Proc:
    name: str  # instance: "generator-1"
    role: str  # service: "generator"
    index: int
    popen: subprocess.Popen
    restarts: int = 0


class Stack:
    def __init__(self, cfg: T1Config, services: tuple[str, ...] = SERVICES,
                 restart: bool = True, max_restarts: int = 5) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        # Generators scale out: replicas share the prompt stream through the consumer group.
        self.instances = [(role, i) for role in services
                          for i in range(cfg.generator.replicas if role == "generator" else 1)]
        self.restart = restart
        self.max_restarts = max_restarts
        self.redis: EmbeddedRedis | None = None
        self.procs: dict[str, Proc] = {}
        self.stopping = False
        self._prev_sigterm = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "Stack":
        if self.procs:  # a second start would run every service twice, on the same ports
            raise RuntimeError("this stack is already started")
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        if threading.current_thread() is threading.main_thread():
            # Python's default SIGTERM ends the process without unwinding, which would orphan
            # the services (own sessions) and Redis; an exit status of 128 + 15 unwinds instead.
            self._prev_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        if not self.cfg.redis.url:
            self.redis = EmbeddedRedis(self.run_dir / "redis").start()
            self.cfg = self.cfg.model_copy(update={"redis": self.cfg.redis.model_copy(
                update={"url": self.redis.url})})
        self.config_path = self.run_dir / "config.yaml"
        dump_config(self.cfg, self.config_path)
        (self.run_dir / "stack.json").write_text(json.dumps(
            {"redis_url": self.cfg.redis.url, "prefix": self.cfg.redis.prefix, "pid": os.getpid()}))
        for role, index in self.instances:
            self.spawn(role, index)
        return self

    def command(self, role: str, index: int) -> list[str]:
        port = getattr(self.cfg, role).port + index  # replicas listen on consecutive ports
        return [sys.executable, "-m", "services.cli", role, "--config", str(self.config_path),
                "--name", f"{role}-{index}", "--port", str(port)]

    def spawn(self, role: str, index: int = 0) -> Proc:
        name = f"{role}-{index}"
        logfile = open(self.run_dir / "logs" / f"{name}.log", "ab")
        popen = subprocess.Popen(self.command(role, index), stdout=logfile, stderr=subprocess.STDOUT,
                                 start_new_session=True, env=self._env())
        logfile.close()
        prev = self.procs.get(name)
        proc = Proc(name, role, index, popen, restarts=prev.restarts + 1 if prev else 0)
        self.procs[name] = proc
        log.info("started %s (pid %d)", name, popen.pid)
        return proc

    def proc(self, name: str) -> Proc:
        """An instance by name ("generator-1"), or a service's first instance ("verifier")."""
        return self.procs[name] if name in self.procs else self.procs[f"{name}-0"]

    def _env(self) -> dict[str, str]:
        # Each service is its own distributed world; drop any rank/port a parent process set
        # (e.g. the demo's in-process SFT) so the trainer does not collide with it.
        dist_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT",
                     "CROSS_RANK", "CROSS_SIZE")
        env = {k: v for k, v in os.environ.items() if k not in dist_vars}
        env["T1__REDIS__URL"] = self.cfg.redis.url or ""
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def supervise(self) -> dict[str, int | None]:
        """Restart crashed services; returns exit codes of the ones that ended (None: running)."""
        codes: dict[str, int | None] = {}
        for name, proc in list(self.procs.items()):
            code = proc.popen.poll()
            codes[name] = code
            if code is None or self.stopping:
                continue
            if proc.role == "trainer" and code == 0:
                continue  # the run is complete
            if self.restart and proc.restarts < self.max_restarts:
                log.warning("%s exited with %s; restarting", name, code)
                self._kill_group(proc, signal.SIGKILL)  # its engine children, if any survived
                self.spawn(proc.role, proc.index)
                codes[name] = None
        return codes

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Signal one service's main process (fault injection); returns its pid."""
        pid = self.proc(name).popen.pid
        os.kill(pid, sig)
        return pid

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stopping = True
        restore = self._prev_sigterm is not None and threading.current_thread() is threading.main_thread()
        if restore:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut teardown short
        for proc in self.procs.values():
            self._kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._kill_group(proc, signal.SIGKILL)
            proc.popen.wait()
        if self.redis:
            self.redis.stop()
        if restore:
            signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._prev_sigterm = None

    @staticmethod
    def _kill_group(proc: Proc, sig: int) -> None:
        try:
            os.killpg(proc.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- observation -----------------------------------------------------------------------------
    def streams(self) -> streams.Streams:
        return streams.Streams(streams.connect(self.cfg.redis.url), self.cfg.redis.prefix,
                               self.cfg.redis.keep_acked)

    def wait_trainer(self, timeout_s: float, on_poll=None, poll_s: float = 1.0) -> int:
        """Supervise until the trainer exits 0 (run complete); raise on timeout or give-up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            codes = self.supervise()
            if codes.get("trainer-0") == 0:
                return 0
            for name, code in codes.items():
                if code is not None and (not self.restart or self.procs[name].restarts >= self.max_restarts):
                    raise RuntimeError(f"{name} keeps failing (exit {code}); see "
                                       f"{self.run_dir}/logs/{name}.log")
            if on_poll:
                on_poll()
            time.sleep(poll_s)
        raise TimeoutError(f"trainer did not finish within {timeout_s:.0f}s; logs in {self.run_dir}/logs")
