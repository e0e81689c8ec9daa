"""``t1 trainer``: the DeepSpeed RL trainer (feeder, steps, weight publication).

Launched once, or by ``deepspeed``/torchrun with WORLD_SIZE > 1: rank 0 serves HTTP and does
all Redis work; the other ranks only train on the batches it broadcasts.
"""

from __future__ import annotations

import os

from services.common.config import T1Config
from services.common.http import ServerThread, service_app
from services.common.logs import setup_logging
from services.common.runtime import consumer_name, pin_cpus, require_redis, stop_on_signals


def serve(cfg: T1Config, name: str | None = None) -> int:
    setup_logging("trainer")
    pin_cpus(cfg.trainer.cpus)
    main = int(os.environ.get("RANK", "0")) == 0
    s = require_redis(cfg, "trainer") if main else None
    state: dict = {"ready": False, "version": None}
    http = ServerThread(service_app("trainer", lambda: dict(state)),
                        cfg.trainer.host, cfg.trainer.port).start() if main else None
    from services.trainer.rl import RLTrainer

    # No in-process retry on Redis errors: a step whose commit transaction failed has already
    # changed the weights in memory, so the trainer exits and the supervisor restarts it from the
    # checkpoint of the last committed version.
    trainer = RLTrainer(cfg, s, consumer_name("trainer", name))
    stop_on_signals(trainer.stop_event)
    state.update(ready=True, version=trainer.version)
    try:
        while trainer.version < cfg.trainer.total_steps and not trainer.stopping:
            trainer.run_once()
            state["version"] = trainer.version
        if trainer.version >= cfg.trainer.total_steps:
            trainer.finish()
    finally:
        if http is not None:
            http.stop()
    return 0
