"""The RL loop: scored groups in, optimizer steps, new weight versions out.

A step, as DESIGN.md §5 reads: ``admission`` fills a batch of ``groups_per_step`` usable groups
(each dropped group gets a recorded reason); ``StepLoss`` takes the forward/backward passes of
the T1 loss over it; DeepSpeed steps; the anchor may rotate; ``publication`` writes the new
version and commits the step -- announcement, ledger and acknowledgements in one Redis
transaction. A crash anywhere before that transaction leaves the groups pending, to be re-read
after restart; the trainer resumes from the newest announced version (weights) and the
Redis-held cursor and ledger.

Data parallel (WORLD_SIZE > 1): rank 0 alone reads and writes Redis and broadcasts each admitted
batch; sequences are sharded over the ranks by tokens and split further into micro-batches
(gradient accumulation); the loss stays the token-level mean over the global batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import msgspec
import torch

from services.common import streams, weights
from services.common.config import T1Config
from services.common.ledger import Ledger
from services.common.logs import event
from services.common.schemas import ScoredGroup
from services.common.weight_probe import WeightProbe, probe_logprobs, probe_token_ids
from services.data.prompt_source import prompt_source
from services.trainer import dist
from services.trainer.admission import Admission, Batch
from services.trainer.anchor import Anchor
from services.trainer.checkpoint import Checkpointer
from services.trainer.feeder import Feeder
from services.trainer.policy import Policy
from services.trainer.publication import Publication
from services.trainer.rl_loss import StepLoss

log = logging.getLogger(__name__)
GROUP = "trainer"


def check_sampling(cfg: T1Config) -> None:
    """RL needs the trainer's log-probs to be of the distribution the generator sampled from: it
    reproduces temperature and top-p (vLLM's rule, ``policy.nucleus_mask``), not min-p."""
    if cfg.generator.min_p > 0:
        raise ValueError(f"generator.min_p={cfg.generator.min_p}: RL cannot reproduce min-p sampling "
                         "in the trainer's log-probs (use top_p, or min_p=0 for RL)")


def step_record(version: int, batch: Batch, fb: dict, compute_s: float, **extra) -> dict:
    """The record of the step that ``version`` took (Redis, TensorBoard, the log): the loss's
    statistics ``fb`` plus rewards, advantages and staleness of the groups trained on."""
    groups = batch.groups
    fb = dict(fb)
    verdicts = [v for g in groups for v in g.verdicts]
    rewards = torch.tensor([v.reward for v in verdicts])
    advantages, seq_kl, n_tokens = fb.pop("advantages"), fb.pop("seq_kl"), fb.pop("tokens")
    return {
        "step": version + 1, **fb,
        "reward_mean": rewards.mean().item(),
        **{f"reward_{c}": sum(v.components.get(c, 0.0) for v in verdicts) / len(verdicts)
           for c in ("correct", "truncated", "repetitive", "garbled")},
        "accuracy": sum(v.correct for v in verdicts) / len(verdicts),
        "adv_mean": advantages.mean().item(), "adv_std": advantages.std().item(),
        "adv_abs_max": advantages.abs().max().item(),
        "seq_kl_mean": seq_kl.mean().item(),
        "kept_fraction": len(verdicts) / max(batch.offered, 1),
        "unscored_samples": batch.unscored,
        "response_len": n_tokens / len(verdicts), "tokens": n_tokens,
        "tokens_per_s": n_tokens / max(compute_s, 1e-9), "compute_s": compute_s,
        "staleness_mean": sum(version - g.rollout.policy_version for g in groups) / len(groups),
        "min_group_version": min(g.rollout.policy_version for g in groups),
        **extra, "time": time.time(), "world_size": dist.world_size(),
    }


class RLTrainer:
    """One per rank. Rank 0 admits groups and owns every Redis write; all ranks train."""

    def __init__(self, cfg: T1Config, s: streams.Streams | None, name: str = "trainer-0") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from services.trainer.ds_engine import (
            build_engine,
            init_distributed,
            train_dtype,
        )

        check_sampling(cfg)
        init_distributed(cfg.trainer.dist_timeout_s)
        self.main = dist.is_main()
        self.cfg = cfg
        self.tc = cfg.trainer
        self.s = s if self.main else None  # other ranks never touch Redis
        self.checkpoints = Checkpointer(Path(cfg.run_dir) / "checkpoints")
        committed, start, resume_from = 0, cfg.model.path, None
        if self.main:
            latest = weights.latest(s)
            committed = latest.version if latest else 0
            resume_from = self.checkpoints.best_for(committed)
            # Resume: the newest committed version's weights (the base model for a new run); its
            # checkpoint, when there is one, brings back optimizer, anchor and RNG too.
            start = latest.uri if latest else cfg.model.path
        committed, start, resume_from = dist.broadcast((committed, start, resume_from))
        self.version = committed
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        torch.set_num_threads(self.tc.torch_threads)
        model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
        self.engine = build_engine(Policy(model, self.tc.logprob_chunk_tokens), self.tc, self.tc.lr)
        # the anchor: no gradients, in the engine's compute dtype, on its device (or offloaded)
        self.anchor = Anchor(AutoModelForCausalLM.from_pretrained(start, dtype=train_dtype(self.tc)),
                             self.tc.anchor_interval, self.tc.anchor_mode, self.tc.anchor_ema_decay,
                             version=committed, device=self.engine.device,
                             offload=self.tc.anchor_offload, chunk_tokens=self.tc.logprob_chunk_tokens)
        self.step_loss = StepLoss(self.engine, self.anchor, self.tc, pad_id)
        self.probe_ids = (probe_token_ids(model.config.vocab_size, self.tc.weight_probe_sequences,
                                          self.tc.weight_probe_tokens)
                          if self.tc.weight_probe_sequences else None)
        if resume_from is not None and resume_from == committed and committed > 0:
            self.checkpoints.load(self.engine, self.anchor, resume_from)  # collective
        elif committed > 0:
            log.warning("no checkpoint for committed v%d (newest usable: %s): weights from the "
                        "announcement, fresh optimizer state, anchor = policy", committed, resume_from)
        self.stop_event = threading.Event()
        self.stopped = False  # a stop agreed by all ranks: every rank leaves the loop together
        self.data_done = False  # data.epochs ran out and every group was trained or dropped
        if self.main:
            ledger = Ledger(s)
            consumer = streams.Consumer(s, streams.SCORED, GROUP, name, ScoredGroup,
                                        cfg.redis.visibility_timeout_s, cfg.redis.block_ms,
                                        on_poison=ledger.mark_poisoned)
            self.feeder = Feeder(s, ledger, prompt_source(cfg, "train", tokenizer),
                                 (self.tc.max_staleness + 1) * self.tc.groups_per_step, cfg.data.epochs)
            self.admission = Admission(s, ledger, consumer, self.feeder, self.tc)
            self.publication = Publication(cfg, s, ledger, consumer, self.version)
        event(log, "trainer ready", version=self.version, start=str(start), rank=dist.rank(),
              world_size=dist.world_size())

    # -- one optimizer step (every rank) --------------------------------------------------------
    def train_step(self, batch: Batch) -> dict:
        t0 = time.monotonic()
        background = (self.admission.in_background(self.version, self.stop_event) if self.main
                      else contextlib.nullcontext())
        with background:  # rank 0 admits the next batch while this one computes
            fb = self.step_loss.run(batch.groups)
            self.engine.step()
            grad_norm = self.engine.get_global_grad_norm()
            compute_s = time.monotonic() - t0

        probe = None
        if self.probe_ids is not None:  # every rank: under ZeRO-3 the forward is collective
            probe = WeightProbe(token_ids=self.probe_ids, logprobs=probe_logprobs(
                self.engine.module.lm, self.probe_ids, self.engine.device))
        new_version = self.version + 1
        with dist.full_params(self.engine):  # ZeRO-3: the anchor and the published files need it all
            rotated = self.anchor.maybe_rotate(self.engine.module.lm, new_version)
            ann = self.publication.write(self.engine.module.lm, new_version, probe) if self.main else None
        if self.tc.checkpoint_interval and new_version % self.tc.checkpoint_interval == 0:
            self.checkpoints.save(self.engine, self.anchor, new_version)  # collective
        record = step_record(
            self.version, batch, fb, anchor_version=self.anchor.version, anchor_rotated=rotated,
            grad_norm=float(grad_norm) if grad_norm is not None else None,
            compute_s=compute_s, publish_s=time.monotonic() - t0 - compute_s)
        if self.main:
            ann = self.publication.commit(batch, ann, record)
            self.admission.advance()
        if self.tc.weight_broadcast and dist.broadcast(self.main and ann.broadcast is not None):
            with dist.full_params(self.engine):  # ZeRO-3 gathers again: the commit came between
                if self.main:
                    self.publication.broadcast(self.engine.module.lm, ann)
        self.version = new_version
        return record

    # -- the loop -----------------------------------------------------------------------------
    def run_once(self) -> dict | None:
        """Admit what the pipeline has room for, read scored groups, step when a batch is full.
        Rank 0 decides; the other ranks receive its decision and the batch."""
        batch = None
        if self.main:
            self.admission.fill(self.version)
            batch = self.admission.current if self.admission.full() else None
            self.data_done = batch is None and self.admission.drained()
        if dist.world_size() > 1:
            # A stop on any rank (SIGTERM to one pod of a multi-node run) stops them all here,
            # between steps; the unfinished batch stays pending in Redis for the restart.
            self.stopped = dist.any_rank(self.stop_event.is_set())
            if self.stopped:
                return None
            blob = msgspec.msgpack.encode(batch.groups) if batch is not None else None
            counts = (batch.offered, batch.unscored) if batch is not None else (0, 0)
            blob, (offered, unscored), self.data_done = dist.broadcast((blob, counts, self.data_done))
            if not self.main and blob is not None:
                batch = Batch(groups=msgspec.msgpack.decode(blob, type=list[ScoredGroup]),
                              offered=offered, unscored=unscored)
        return self.train_step(batch) if batch is not None else None

    @property
    def done(self) -> bool:
        """The run is over: its step budget is spent, or its data (``data.epochs``) is."""
        return self.version >= self.tc.total_steps or self.data_done

    @property
    def stopping(self) -> bool:
        """Whether the loop should end: in a multi-rank run only the stop all ranks agreed on in
        ``run_once`` counts, so that no rank leaves while the others wait in a collective."""
        return self.stopped if dist.world_size() > 1 else self.stop_event.is_set()

    def finish(self) -> None:
        """Close the run's books: whatever is still in flight is dropped as ``run_ended``."""
        if not self.main:
            return
        pipe = self.s.transaction()
        self.admission.close(pipe)
        pipe.set(self.s.key("trainer:finished"), self.version)
        pipe.execute()
        self.publication.close()
        event(log, "run finished", version=self.version, epoch=self.feeder.epoch,
              **self.admission.ledger.counts())
