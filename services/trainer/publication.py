"""Publication (rank 0): a step's weights written as a version, then the step committed.

The commit is one Redis transaction: the version's announcement, the trained groups marked in
the ledger and acknowledged, and the step's record. It is the step's commit point: a crash
before it leaves the groups pending and the version unannounced (its files, if written, are
overwritten by the retried step).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
from prometheus_client import Counter, Gauge

from services.common import streams, weights
from services.common.config import T1Config
from services.common.ledger import Ledger
from services.common.logs import event
from services.common.schemas import WeightAnnouncement
from services.common.weight_probe import WeightProbe
from services.trainer.admission import Batch
from services.trainer.step_log import StepLogger

log = logging.getLogger(__name__)

STEPS = Counter("t1_trainer_steps_total", "optimizer steps")
VERSION = Gauge("t1_trainer_policy_version", "latest published policy version")
REWARD = Gauge("t1_trainer_reward_mean", "mean reward of the last step's groups")


class Publication:
    def __init__(self, cfg: T1Config, s: streams.Streams, ledger: Ledger,
                 consumer: streams.Consumer, version: int) -> None:
        self.cfg, self.s, self.ledger, self.consumer = cfg, s, ledger, consumer
        self.tokenizer_src = Path(cfg.model.path)
        self.steps_key = s.key("trainer:steps")
        tc = cfg.trainer
        self.step_log = None
        if tc.tensorboard or tc.wandb_project:
            self.step_log = StepLogger(Path(cfg.run_dir), tc.tensorboard, tc.wandb_project,
                                       cfg.model_dump(mode="json"))
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="weights-digest")
        self._digest = None
        self.broadcaster = None
        if tc.weight_broadcast:
            from services.trainer.broadcaster import WeightBroadcaster

            self.broadcaster = WeightBroadcaster(tc, s)
        VERSION.set(version)

    def write(self, lm, version: int, probe: WeightProbe | None = None) -> WeightAnnouncement:
        """The version's files (inside ``dist.full_params``: under ZeRO-3 ``lm`` then holds the
        gathered parameters); returns the announcement to commit, with the version's probe.

        Its digest is computed in a thread, over the bytes just written (page cache), while the
        step goes on (the checkpoint save); ``commit`` waits for it."""
        path = weights.write_version_files(self.cfg.weights_dir, version,
                                           lambda p: lm.save_pretrained(p, safe_serialization=True),
                                           self.tokenizer_src, keep_every=self.cfg.trainer.keep_versions_every)
        self._digest = self._hasher.submit(weights.payload_sha256, path)
        offer = self.broadcaster.offer(lm, version) if self.broadcaster is not None else None
        return WeightAnnouncement(version=version, uri=str(path.resolve()), sha256="", step=version,
                                  probe=probe, broadcast=offer)

    def broadcast(self, lm, ann: WeightAnnouncement) -> dict | None:
        """After the commit: send the version to the generators its announcement names."""
        if self.broadcaster is None or ann.broadcast is None:
            return None
        result = self.broadcaster.send(lm, ann.version, ann.broadcast)
        event(log, "weights broadcast", **result)
        return result

    def commit(self, batch: Batch, ann: WeightAnnouncement, record: dict) -> WeightAnnouncement:
        """The step's commit; returns the announcement as committed (with its digest)."""
        if not ann.sha256:
            ann = msgspec.structs.replace(ann, sha256=self._digest.result())
        pipe = self.s.transaction()
        weights.announce(self.s, ann, pipe)
        for g in batch.groups:
            self.ledger.mark_trained(pipe, g.rollout.prompt.prompt_id, ann.version, g.rollout.policy_version)
        self.consumer.ack(batch.entry_ids, pipe)
        pipe.rpush(self.steps_key, json.dumps(record))
        pipe.execute()  # the commit point of the step
        STEPS.inc()
        VERSION.set(ann.version)
        REWARD.set(record["reward_mean"])
        if self.step_log is not None:
            self.step_log.log(record)
        event(log, "rl step", **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()})
        return ann

    def close(self) -> None:
        self._hasher.shutdown(wait=True)
        if self.step_log is not None:
            self.step_log.close()
        if self.broadcaster is not None:
            self.broadcaster.close()
            self.broadcaster = None
