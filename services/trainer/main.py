"""``t1 trainer``: the DeepSpeed RL trainer (feeder, steps, weight publication).

Launched once, or by torchrun / the DeepSpeed launcher with WORLD_SIZE > 1 (docs/deploy.md,
"Trainer ranks"): rank 0 does all Redis work and the other ranks only train on the batches it
broadcasts. Each node's (pod's) local rank 0 serves HTTP, so every pod answers its probes.
"""

from __future__ import annotations

import logging
import os

from services.common.config import T1Config
from services.common.http import ServerThread, service_app
from services.common.logs import setup_logging
from services.common.runtime import consumer_name, pin_cpus, require_model, require_redis, stop_on_signals

log = logging.getLogger(__name__)
PEER_STOPPED = os.EX_TEMPFAIL  # 75: temporary failure, to be retried


def serve(cfg: T1Config, name: str | None = None) -> int:
    setup_logging("trainer")
    pin_cpus(cfg.trainer.cpus)
    rank = int(os.environ.get("RANK", "0"))
    require_model(cfg.model.path, "trainer")
    s = require_redis(cfg, "trainer") if rank == 0 else None
    state: dict = {"ready": False, "version": None, "rank": rank,
                   "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    serves_http = int(os.environ.get("LOCAL_RANK", "0")) == 0
    http = ServerThread(service_app("trainer", lambda: dict(state)),
                        cfg.trainer.host, cfg.trainer.port).start() if serves_http else None
    from services.trainer.rl import RLTrainer

    # No in-process retry on Redis errors: a step whose commit transaction failed has already
    # changed the weights in memory, so the trainer exits and the supervisor restarts it from the
    # checkpoint of the last committed version.
    try:
        trainer = RLTrainer(cfg, s, consumer_name("trainer", name))
    except ValueError as exc:  # bad settings or data: one line, not a traceback
        raise SystemExit(f"t1 trainer: {exc}") from None
    stop_on_signals(trainer.stop_event)
    state.update(ready=True, version=trainer.version)
    try:
        while not trainer.done and not trainer.stopping:
            trainer.run_once()
            state["version"] = trainer.version
        if trainer.done:
            trainer.finish()
            return 0
    finally:
        if http is not None:
            http.stop()
    if trainer.stop_event.is_set():
        return 0  # this process was asked to stop
    # Another rank was stopped (its pod deleted): leave with a code that means "restart me",
    # not 0, because torchrun waits up to 5 minutes at exit for launchers that a signal ended,
    # and the world must re-form (docs/deploy.md, "Trainer ranks").
    log.warning("stopped because another rank was; exiting %d so that this rank restarts", PEER_STOPPED)
    return PEER_STOPPED
