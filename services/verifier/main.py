"""``t1 verifier``: REST API for outside callers plus the training loop's queue worker."""

from __future__ import annotations

import threading

import uvicorn

from services.common.config import T1Config
from services.common.logs import setup_logging
from services.common.runtime import consumer_name, pin_cpus, require_redis
from services.verifier.app import create_app
from services.verifier.scoring import Scorer


def serve(cfg: T1Config, name: str | None = None) -> None:
    setup_logging("verifier")
    pin_cpus(cfg.verifier.cpus)
    vc = cfg.verifier
    scorer = Scorer(vc)
    worker = None
    if vc.queue_worker and cfg.redis.url:
        from services.verifier.worker import VerifierWorker

        worker = VerifierWorker(require_redis(cfg, "verifier"), scorer,
                                consumer_name("verifier", name),
                                cfg.redis.visibility_timeout_s, cfg.redis.block_ms)
        threading.Thread(target=worker.run, name="queue-worker", daemon=True).start()
    health = (lambda: {"queue_worker": worker is not None,
                       "groups_scored": worker.groups_done if worker else 0,
                       "sandbox_replaced": scorer.pool.replaced})
    try:
        # uvicorn owns the main thread and its SIGTERM handling; the worker stops after it.
        uvicorn.run(create_app(vc, scorer, health), host=vc.host, port=vc.port, log_level="warning")
    finally:
        if worker:
            worker.stop_event.set()
        scorer.close()
