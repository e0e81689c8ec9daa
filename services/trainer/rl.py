"""The RL loop: scored groups in, optimizer steps, new weight versions out.

Per step: collect ``groups_per_step`` usable groups (each dropped group gets a recorded reason),
take one DeepSpeed step on the T1 loss, write + announce the new version, and -- in one Redis
transaction -- mark the groups trained and acknowledge them. A crash anywhere before that
transaction leaves the groups pending, to be re-read after restart; the trainer resumes from the
newest announced version (weights) and the Redis-held cursor and ledger.

Data parallel (WORLD_SIZE > 1): rank 0 alone reads and writes Redis and broadcasts each admitted
batch; whole groups are sharded over the ranks and may be split further into micro-batches
(gradient accumulation); the loss stays the token-level mean over the global batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import torch
from prometheus_client import Counter, Gauge

from services.common import streams, weights
from services.common.config import T1Config
from services.common.ledger import Ledger
from services.common.logs import event
from services.common.schemas import ScoredGroup, WeightAnnouncement
from services.trainer import dist
from services.trainer.anchor import Anchor
from services.trainer.checkpoint import Checkpointer
from services.trainer.feeder import Feeder
from services.trainer.objective import select_samples
from services.trainer.policy import Policy
from services.trainer.rl_loss import StepLoss
from services.trainer.step_log import StepLogger
from services.trainer.task import make_task

log = logging.getLogger(__name__)
GROUP = "trainer"

STEPS = Counter("t1_trainer_steps_total", "optimizer steps")
DROPPED = Counter("t1_trainer_groups_dropped_total", "groups dropped", ["reason"])
VERSION = Gauge("t1_trainer_policy_version", "latest published policy version")
REWARD = Gauge("t1_trainer_reward_mean", "mean reward of the last step's groups")


@dataclass
class Batch:
    entry_ids: list[str] = field(default_factory=list)
    groups: list[ScoredGroup] = field(default_factory=list)  # only the kept samples
    offered: int = 0  # samples generated for these groups, before the keep rule

    def prompt_ids(self) -> set[str]:
        return {g.rollout.prompt.prompt_id for g in self.groups}


def subset(g: ScoredGroup, keep: list[int]) -> ScoredGroup:
    if len(keep) == len(g.verdicts):
        return g
    rollout = msgspec.structs.replace(g.rollout, samples=[g.rollout.samples[i] for i in keep])
    return ScoredGroup(rollout=rollout, verdicts=[g.verdicts[i] for i in keep])


def check_sampling(cfg: T1Config) -> None:
    """RL needs the trainer's log-probs to be of the distribution the generator sampled from: it
    reproduces temperature and top-p (vLLM's rule, ``policy.nucleus_mask``), not min-p."""
    if cfg.generator.min_p > 0:
        raise ValueError(f"generator.min_p={cfg.generator.min_p}: RL cannot reproduce min-p sampling "
                         "in the trainer's log-probs (use top_p, or min_p=0 for RL)")


class RLTrainer:
    """One per rank. Rank 0 admits groups and owns every Redis write; all ranks train."""

    def __init__(self, cfg: T1Config, s: streams.Streams | None, name: str = "trainer-0") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from services.trainer.ds_engine import build_engine, init_distributed, train_dtype

        check_sampling(cfg)
        init_distributed()
        self.main = dist.is_main()
        self.cfg = cfg
        self.tc = cfg.trainer
        self.s = s if self.main else None  # other ranks never touch Redis
        self.checkpoints = Checkpointer(Path(cfg.run_dir) / "checkpoints")
        committed, start, resume_from = 0, cfg.model.path, None
        if self.main:
            self.ledger = Ledger(s)
            self.consumer = streams.Consumer(s, streams.SCORED, GROUP, name, ScoredGroup,
                                             cfg.redis.visibility_timeout_s, cfg.redis.block_ms)
            latest = weights.latest(s)
            committed = latest.version if latest else 0
            resume_from = self.checkpoints.best_for(committed)
            # Resume: the newest committed version's weights (the base model for a new run); its
            # checkpoint, when there is one, brings back optimizer, anchor and RNG too.
            start = latest.uri if latest else cfg.model.path
        committed, start, resume_from = dist.broadcast((committed, start, resume_from))
        self.version = committed
        self.tokenizer_src = Path(cfg.model.path)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        torch.set_num_threads(self.tc.torch_threads)
        model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
        self.engine = build_engine(Policy(model, self.tc.logprob_chunk_tokens), self.tc, self.tc.lr)
        # the anchor: no gradients, in the engine's compute dtype, on its device (or offloaded)
        self.anchor = Anchor(AutoModelForCausalLM.from_pretrained(start, dtype=train_dtype(self.tc)),
                             self.tc.anchor_interval, self.tc.anchor_mode, self.tc.anchor_ema_decay,
                             version=committed, device=self.engine.device,
                             offload=self.tc.anchor_offload, chunk_tokens=self.tc.logprob_chunk_tokens)
        self.step_loss = StepLoss(self.engine, self.anchor, self.tc, self.pad_id)
        if resume_from is not None and resume_from == committed and committed > 0:
            self.checkpoints.load(self.engine, self.anchor, resume_from)  # collective
        elif committed > 0:
            log.warning("no checkpoint for committed v%d (newest usable: %s): weights from the "
                        "announcement, fresh optimizer state, anchor = policy", committed, resume_from)
        self.batch = Batch()
        self.next = Batch()  # admitted while the current batch's step computes
        self.stop_event = threading.Event()
        self.stopped = False  # the stop as rank 0 broadcast it: every rank leaves the loop together
        self.step_log = None
        if self.main:
            task = make_task(cfg.task)
            self.feeder = Feeder(s, self.ledger, task,
                                 (self.tc.max_staleness + 1) * self.tc.groups_per_step)
            self.steps_key = s.key("trainer:steps")
            if self.tc.tensorboard or self.tc.wandb_project:
                self.step_log = StepLogger(Path(cfg.run_dir), self.tc.tensorboard,
                                           self.tc.wandb_project, cfg.model_dump(mode="json"))
            VERSION.set(self.version)
        event(log, "trainer ready", version=self.version, start=str(start), rank=dist.rank(),
              world_size=dist.world_size())

    # -- admission of scored groups (rank 0) --------------------------------------------------
    def _drop(self, entry_id: str, prompt_id: str, reason: str) -> None:
        pipe = self.s.transaction()
        self.ledger.mark_dropped(pipe, prompt_id, reason)
        self.consumer.ack([entry_id], pipe)
        pipe.execute()
        DROPPED.labels(reason).inc()

    def admit(self, entry: streams.Entry, batch: Batch | None = None) -> None:
        """Into ``batch`` (the current one by default; the next one while a step computes, to be
        trained by the version that step makes), or dropped with a reason."""
        batch = self.batch if batch is None else batch
        trained_by = self.version + (batch is self.next)
        g: ScoredGroup = entry.msg
        pid = g.rollout.prompt.prompt_id
        if entry.id in self.batch.entry_ids or entry.id in self.next.entry_ids:
            return  # re-read after a failed iteration: already in a batch, still pending
        status = self.ledger.status(pid)
        if status is None:
            self.consumer.dead_letter(entry.id, f"unknown prompt id {pid}")
            return
        if status != "enqueued" or pid in self.batch.prompt_ids() | self.next.prompt_ids():
            # A redelivered duplicate (e.g. reclaimed from a slow consumer): already accounted.
            pipe = self.s.transaction()
            self.consumer.ack([entry.id], pipe)
            pipe.execute()
            log.warning("duplicate group %s (%s) acknowledged and skipped", pid, status)
            return
        rewards = [v.reward for v in g.verdicts]
        if trained_by - g.rollout.policy_version > self.tc.max_staleness:
            self._drop(entry.id, pid, "too_stale")
        elif any(v.status != "ok" for v in g.verdicts):
            self._drop(entry.id, pid, "verifier_error")
        elif self.tc.drop_zero_variance and max(rewards) == min(rewards):
            self._drop(entry.id, pid, "zero_variance")
        else:
            keep = select_samples(rewards, self.tc.keep_rule, self.tc.keep_size)
            if len(keep) < 2:
                self._drop(entry.id, pid, "too_few_kept")
                return
            batch.entry_ids.append(entry.id)
            batch.groups.append(subset(g, keep))
            batch.offered += len(rewards)

    @contextlib.contextmanager
    def admitting_next(self):
        """Rank 0, around a step's compute: a thread admits groups into ``self.next`` (and tops
        up prompts as drops free room), so generation and scoring go on meanwhile. Only this
        thread touches Redis until it is joined, before the step commits."""
        if not (self.main and self.tc.admit_during_compute):
            yield
            return
        done, failed = threading.Event(), []

        def loop() -> None:
            try:
                while not done.is_set() and not self.stop_event.is_set():
                    self.feeder.top_up(self.version)
                    need = self.tc.groups_per_step - len(self.next.groups)
                    if need <= 0:
                        done.wait(0.05)
                        continue
                    for entry in self.consumer.read(need, block_ms=50):
                        self.admit(entry, self.next)
            except Exception as exc:  # re-raised in the step's thread
                failed.append(exc)

        thread = threading.Thread(target=loop, name="admit-next", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
        if failed:
            raise failed[0]

    def _forward_backward(self, groups: list[ScoredGroup]) -> dict:
        return self.step_loss.run(groups)

    # -- one optimizer step (every rank) --------------------------------------------------------
    def train_step(self) -> dict:
        t0 = time.monotonic()
        tc = self.tc
        groups = self.batch.groups
        with self.admitting_next():
            fb = self._forward_backward(groups)
            self.engine.step()
            grad_norm = self.engine.get_global_grad_norm()
            compute_s = time.monotonic() - t0

        new_version = self.version + 1
        with dist.full_params(self.engine):  # ZeRO-3: the anchor and the published files need it all
            rotated = self.anchor.maybe_rotate(self.engine.module.lm, new_version)
            if self.main:
                path, digest = weights.write_version(self.cfg.weights_dir, new_version,
                                                     self._save_model, self.tokenizer_src,
                                                     keep_every=tc.keep_versions_every)
        if tc.checkpoint_interval and new_version % tc.checkpoint_interval == 0:
            self.checkpoints.save(self.engine, self.anchor, new_version)  # collective
        verdicts = [v for g in groups for v in g.verdicts]
        all_rewards = torch.tensor([v.reward for v in verdicts])
        advantages, seq_kl, n_tokens = fb.pop("advantages"), fb.pop("seq_kl"), fb.pop("tokens")
        record = {
            "step": new_version, **fb,
            "reward_mean": all_rewards.mean().item(),
            **{f"reward_{c}": sum(v.components.get(c, 0.0) for v in verdicts) / len(verdicts)
               for c in ("correct", "truncated", "repetitive", "garbled")},
            "accuracy": sum(v.correct for v in verdicts) / len(verdicts),
            "adv_mean": advantages.mean().item(), "adv_std": advantages.std().item(),
            "adv_abs_max": advantages.abs().max().item(),
            "seq_kl_mean": seq_kl.mean().item(),
            "anchor_version": self.anchor.version, "anchor_rotated": rotated,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "kept_fraction": len(verdicts) / max(self.batch.offered, 1),
            "response_len": n_tokens / len(verdicts), "tokens": n_tokens,
            "tokens_per_s": n_tokens / max(compute_s, 1e-9),
            "staleness_mean": sum(self.version - g.rollout.policy_version for g in groups) / len(groups),
            "min_group_version": min(g.rollout.policy_version for g in groups),
            "compute_s": compute_s, "publish_s": time.monotonic() - t0 - compute_s,
            "time": time.time(), "world_size": dist.world_size(),
        }
        if self.main:
            self._commit(record, WeightAnnouncement(version=new_version, uri=str(path.resolve()),
                                                    sha256=digest, step=new_version))
        self.version = new_version
        self.batch, self.next = self.next, Batch()
        return record

    def _commit(self, record: dict, ann: WeightAnnouncement) -> None:
        pipe = self.s.transaction()
        weights.announce(self.s, ann, pipe)
        for g in self.batch.groups:
            self.ledger.mark_trained(pipe, g.rollout.prompt.prompt_id, ann.version, g.rollout.policy_version)
        self.consumer.ack(self.batch.entry_ids, pipe)
        pipe.rpush(self.steps_key, json.dumps(record))
        pipe.execute()  # the commit point of the step
        STEPS.inc()
        VERSION.set(ann.version)
        REWARD.set(record["reward_mean"])
        if self.step_log is not None:
            self.step_log.log(record)
        event(log, "rl step", **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()})

    def _save_model(self, path: Path) -> None:
        # Called inside full_params: under ZeRO-3 the module holds the gathered parameters.
        self.engine.module.lm.save_pretrained(path, safe_serialization=True)

    # -- the loop -----------------------------------------------------------------------------
    def run_once(self) -> dict | None:
        """Admit what the pipeline has room for, read scored groups, step when a batch is full.
        Rank 0 decides; the other ranks receive its decision and the batch."""
        if self.main:
            self.feeder.top_up(self.version)
            need = self.tc.groups_per_step - len(self.batch.groups)
            for entry in self.consumer.read(need) if need > 0 else []:
                self.admit(entry)
        if dist.world_size() > 1:
            full = len(self.batch.groups) >= self.tc.groups_per_step
            blob = msgspec.msgpack.encode(self.batch.groups) if self.main and full else None
            stop, blob, offered = dist.broadcast((self.stop_event.is_set(), blob, self.batch.offered))
            self.stopped = stop
            if stop:
                return None  # the unfinished batch stays pending in Redis for the restart
            if not self.main and blob is not None:
                self.batch = Batch(groups=msgspec.msgpack.decode(blob, type=list[ScoredGroup]),
                                   offered=offered)
        if len(self.batch.groups) >= self.tc.groups_per_step:
            return self.train_step()
        return None

    @property
    def stopping(self) -> bool:
        """Whether the loop should end: in a multi-rank run only the broadcast stop counts, so
        that no rank leaves while the others wait in a collective."""
        return self.stopped if dist.world_size() > 1 else self.stop_event.is_set()

    def finish(self) -> None:
        """Close the run's books: whatever is still in flight is dropped as ``run_ended``."""
        if not self.main:
            return
        pipe = self.s.transaction()
        for entry_id, g in zip(self.batch.entry_ids, self.batch.groups):
            self.ledger.mark_dropped(pipe, g.rollout.prompt.prompt_id, "run_ended")
            self.consumer.ack([entry_id], pipe)
        done = {g.rollout.prompt.prompt_id for g in self.batch.groups}
        for pid, status in self.ledger.statuses().items():
            if status == "enqueued" and pid not in done:
                self.ledger.mark_dropped(pipe, pid, "run_ended")
        pipe.set(self.s.key("trainer:finished"), self.version)
        pipe.execute()
        self.batch = Batch()
        if self.step_log is not None:
            self.step_log.close()
        event(log, "run finished", version=self.version, **self.ledger.counts())
