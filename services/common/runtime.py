"""What every service process does at start: logging, Redis connection, names, signals."""

from __future__ import annotations

import signal
import socket
import threading

from services.common import streams
from services.common.config import T1Config


def consumer_name(role: str, explicit: str | None) -> str:
    # Stable across restarts on the same host (k8s: pod name), so a restarted consumer re-reads
    # its own pending entries at once instead of waiting out the visibility timeout.
    return explicit or f"{role}-{socket.gethostname()}"


def require_redis(cfg: T1Config, role: str) -> streams.Streams:
    if not cfg.redis.url:
        raise SystemExit(f"t1 {role}: no Redis configured; set redis.url (env T1__REDIS__URL) "
                         f"or run the whole local stack with `t1 up`")
    return streams.Streams(streams.connect(cfg.redis.url), cfg.redis.prefix, cfg.redis.keep_acked)


def stop_on_signals(stop_event: threading.Event) -> None:
    """SIGTERM/SIGINT finish the current iteration, then exit; unacked work stays pending."""
    def handler(signum, _frame):
        stop_event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
