"""``t1 verifier``: REST API for outside callers plus the training loop's queue worker."""

from __future__ import annotations

import threading
from pathlib import Path

import uvicorn

from services.common.config import T1Config, VerifierConfig
from services.common.logs import setup_logging
from services.common.runtime import consumer_name, pin_cpus, require_redis
from services.verifier.app import create_app
from services.verifier.scoring import Scorer

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def auth_token(vc: VerifierConfig) -> str | None:
    """The REST token: ``auth_token`` (from the environment), else ``auth_token_file``'s
    content; a file that cannot be read or is empty is a start-up error, not 'no token'."""
    if vc.auth_token:
        return vc.auth_token
    if vc.auth_token_file:
        try:
            token = Path(vc.auth_token_file).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"verifier: cannot read verifier.auth_token_file: {exc}") from None
        if not token:
            raise SystemExit(f"verifier: verifier.auth_token_file {vc.auth_token_file} is empty")
        return token
    return None


def serve(cfg: T1Config, name: str | None = None) -> None:
    setup_logging("verifier")
    pin_cpus(cfg.verifier.cpus)
    vc = cfg.verifier.model_copy(update={"auth_token": auth_token(cfg.verifier)})
    if vc.auth_token is None and vc.host not in LOOPBACK and not vc.allow_anonymous:
        raise SystemExit(f"verifier: listening on {vc.host} without a token: set "
                         "T1__VERIFIER__AUTH_TOKEN or verifier.auth_token_file (or "
                         "verifier.allow_anonymous=true where the port is private)")
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
                       "sandbox_replaced": scorer.pool.replaced + (scorer.slow_pool.replaced if scorer.slow_pool else 0)})
    try:
        # uvicorn owns the main thread and its SIGTERM handling; the worker stops after it.
        uvicorn.run(create_app(vc, scorer, health), host=vc.host, port=vc.port, log_level="warning")
    finally:
        if worker:
            worker.stop_event.set()
        scorer.close()
