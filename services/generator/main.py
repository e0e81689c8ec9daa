"""``t1 generator``: the vLLM rollout service (and an OpenAI-compatible endpoint on its engine).

Threads: the engine's asyncio loop (rollout worker, HTTP server, vLLM's output handling) runs in
a thread of its own; the main thread builds the engine, then waits for a signal. SIGTERM stops
admission; the groups in flight are finished and published before the process exits 0.
"""

from __future__ import annotations

import logging
import threading

from services.common.config import T1Config
from services.common.http import service_app
from services.common.logs import event, setup_logging
from services.common.runtime import consumer_name, pin_cpus, require_model, require_redis, stop_on_signals

log = logging.getLogger(__name__)


def serve(cfg: T1Config, name: str | None = None) -> None:
    setup_logging("generator")
    pin_cpus(cfg.generator.cpus)
    require_model(cfg.model.path, "generator")
    s = require_redis(cfg, "generator")
    name = consumer_name("generator", name)
    gcfg = cfg.generator
    from services.generator.engine import EventLoopThread, RolloutEngine
    from services.generator.http import LoopServer, add_openai_error_handlers, mount_openai
    from services.generator.transport import make_receiver
    from services.generator.worker import GeneratorWorker

    receiver = make_receiver(gcfg, s, name)
    worker: GeneratorWorker | None = None

    def health() -> dict:
        if worker is None:
            return {"ready": False, "name": name, "version": None}
        return {"ready": True, "name": name, "version": worker.version,
                "inflight_groups": len(worker.inflight), "pending_rollouts": worker.pending_rollouts,
                "tokens_per_s": round(worker._rate.add(0)), "last_sync": worker.last_sync}

    stop = threading.Event()
    stop_on_signals(stop)
    app = service_app("generator", health)
    if gcfg.openai_api:
        add_openai_error_handlers(app)
    loop = EventLoopThread()
    http = LoopServer(app, gcfg.host, gcfg.port, loop).start()
    engine = RolloutEngine(cfg.model.path, gcfg, receiver.engine_args(), loop=loop)
    try:
        loop.run(receiver.setup(engine))
        if gcfg.openai_api:
            loop.run(mount_openai(app, engine, gcfg.served_model_name))
        worker = GeneratorWorker(s, engine, name, gcfg, cfg.redis.visibility_timeout_s,
                                 cfg.redis.block_ms, receiver)
        running = loop.submit(worker.run())
        while not stop.is_set() and not running.done():
            stop.wait(0.5)
        loop.loop.call_soon_threadsafe(worker.stop)
        running.result()  # drained: every group in flight was published
        loop.run(receiver.close())
        event(log, "generator stopped", version=worker.version)
    finally:
        http.stop()
        engine.shutdown()
