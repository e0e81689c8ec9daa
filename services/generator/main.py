"""``t1 generator``: the vLLM rollout service."""

from __future__ import annotations

import logging
import threading

import redis

from services.common.config import T1Config
from services.common.http import ServerThread, service_app
from services.common.logs import setup_logging
from services.common.runtime import consumer_name, require_redis, stop_on_signals

log = logging.getLogger(__name__)


def serve(cfg: T1Config, name: str | None = None) -> None:
    setup_logging("generator")
    s = require_redis(cfg, "generator")
    name = consumer_name("generator", name)
    state: dict = {"ready": False, "name": name, "version": None}
    stop = threading.Event()
    stop_on_signals(stop)
    http = ServerThread(service_app("generator", lambda: dict(state)),
                        cfg.generator.host, cfg.generator.port).start()
    from services.generator.engine import RolloutEngine
    from services.generator.worker import GeneratorWorker

    engine = RolloutEngine(cfg.model.path, cfg.generator)
    worker = GeneratorWorker(s, engine, name, cfg.generator.max_prompts_per_batch,
                             cfg.redis.visibility_timeout_s, cfg.redis.block_ms)
    worker.stop_event = stop
    worker.maybe_update_weights()  # a restarted generator serves the newest version at once
    state.update(ready=True)
    try:
        while not stop.is_set():
            try:
                worker.run_once()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Redis restarting: unacknowledged prompts stay pending and are claimed again
                # after the visibility timeout; keep the engine, reconnect on the next call.
                log.warning("redis unavailable (%s); retrying in 1s", exc)
                stop.wait(1.0)
            state["version"] = worker.version
    finally:
        http.stop()
