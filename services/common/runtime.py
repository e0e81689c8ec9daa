"""What every service process does at start: logging, Redis connection, names, signals, cores."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from services.common import streams
from services.common.config import T1Config


def consumer_name(role: str, explicit: str | None) -> str:
    # Stable across restarts on the same host (k8s: pod name), so a restarted consumer re-reads
    # its own pending entries at once instead of waiting out the visibility timeout.
    return explicit or f"{role}-{socket.gethostname()}"


def require_redis(cfg: T1Config, role: str) -> streams.Streams:
    """The run's streams, once Redis answers (within ``redis.connect_wait_s``); a malformed or
    unreachable URL ends the process in one line."""
    import redis

    if not cfg.redis.url:
        raise SystemExit(f"t1 {role}: no Redis configured; set redis.url (env T1__REDIS__URL) "
                         f"or run the whole local stack with `t1 up`")
    try:
        client = streams.connect(cfg.redis.url)
    except ValueError as exc:  # the URL itself: no scheme, bad port, ...
        raise SystemExit(f"t1 {role}: redis.url {streams.redacted(cfg.redis.url)!r}: {exc}") from None
    deadline = time.monotonic() + cfg.redis.connect_wait_s
    while True:
        try:
            client.ping()
            break
        except redis.RedisError as exc:
            if isinstance(exc, redis.AuthenticationError) or time.monotonic() >= deadline:
                raise SystemExit(f"t1 {role}: Redis at {streams.redacted(cfg.redis.url)} did not answer "
                                 f"within {cfg.redis.connect_wait_s:g} s: {exc}") from None
            time.sleep(0.5)
    return streams.Streams(client, cfg.redis.prefix, cfg.redis.keep_acked, cfg.redis.max_deliveries)


def require_model(path: str, role: str) -> None:
    """A model path that names a local directory must hold a model (a mistyped path ends here,
    in one line, not in a loader's traceback). A name that is not a local path (``org/model``)
    is left to the Hugging Face loader: it may be a hub id."""
    p = Path(path).expanduser()
    local = p.is_absolute() or path.startswith(".") or p.exists()
    if local and not (p / "config.json").is_file():
        what = "no such directory" if not p.exists() else "no config.json in it"
        raise SystemExit(f"t1 {role}: model.path {path!r}: {what} (a Hugging Face model directory; "
                         "`t1 init-model` builds the tiny default)")


def stop_on_signals(stop_event: threading.Event) -> None:
    """SIGTERM/SIGINT finish the current iteration, then exit; unacked work stays pending."""
    def handler(signum, _frame):
        stop_event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cpu_list(spec: str, available: list[int] | None = None) -> list[int] | None:
    """The cores a ``cpus`` setting names; None means all (no pinning).

    ``"first-half"``/``"second-half"`` split the cores this process may use, so that on a small
    machine the generator and the trainer stop taking turns on the same cores (the local stack's
    CPU preset); on one core both halves are that core's.
    """
    available = sorted(available if available is not None else os.sched_getaffinity(0))
    spec = spec.strip()
    if not spec:
        return None
    if spec in ("first-half", "second-half"):
        if len(available) < 2:
            return None
        half = len(available) // 2
        return available[:half] if spec == "first-half" else available[half:]
    cores: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            cores.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise SystemExit(f"bad cpus setting {spec!r}: use e.g. \"0,2-3\", \"first-half\" or \"\"") from None
    missing = cores - set(available)
    if missing or not cores:
        raise SystemExit(f"cpus {spec!r} names cores this process cannot use: {sorted(missing)} "
                         f"(available: {available})")
    return sorted(cores)


def pin_cpus(spec: str) -> list[int] | None:
    """Pin this process (and the processes it starts) to the cores ``spec`` names. vLLM's CPU
    backend binds its OpenMP threads itself, so it is told the same cores."""
    cores = cpu_list(spec)
    if cores is not None:
        os.sched_setaffinity(0, cores)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
    return cores
