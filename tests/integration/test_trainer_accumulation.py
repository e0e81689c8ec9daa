"""Gradient accumulation over token-packed micro-batches, and the TensorBoard step scalars.

A step split into several forward/backward passes must equal the one-pass step: the same
global gradient (norm compared at 1e-5), the same published weights.
"""

from __future__ import annotations

import pytest
import torch
from test_trainer import K, scorer  # noqa: F401  (scorer: a fixture)
from test_trainer_distributed import GROUPS, assert_close, config, publish_fixed_batch, published
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common import streams
from services.trainer.step_log import scalars


def one_step(tmp_path, name, tiny_model_dir, redis_server, scorer, *extra):  # noqa: F811
    from services.trainer.rl import RLTrainer

    s = streams.Streams(streams.connect(redis_server.url), prefix=f"test-acc-{name}-{tmp_path.name}")
    run_dir = tmp_path / name
    cfg = config(run_dir, tiny_model_dir, redis_server.url, s.prefix, *extra)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    publish_fixed_batch(s, cfg, tok, model, scorer, n=GROUPS)
    trainer = RLTrainer(cfg, s, "trainer-acc")
    record = None
    while record is None:
        record = trainer.run_once()
    return trainer, record, run_dir


def test_micro_batches_give_the_one_pass_update(tmp_path, tiny_model_dir, redis_server, scorer):  # noqa: F811
    whole, rec_whole, dir_whole = one_step(tmp_path, "whole", tiny_model_dir, redis_server, scorer)
    # a budget below any sequence's size: every sample becomes a micro-batch of its own, so each
    # group spans K of them (its advantages were computed for the whole group first)
    split, rec_split, dir_split = one_step(tmp_path, "split", tiny_model_dir, redis_server, scorer,
                                           "trainer.micro_batch_tokens=1",
                                           "trainer.gradient_checkpointing=true")
    assert rec_split["micro_batches"] == GROUPS * K >= 12 and rec_whole["micro_batches"] == 1
    assert split.engine.module.lm.is_gradient_checkpointing and not whole.engine.module.lm.is_gradient_checkpointing
    assert rec_split["grad_norm"] == pytest.approx(rec_whole["grad_norm"], rel=1e-5)
    assert rec_split["loss"] == pytest.approx(rec_whole["loss"], rel=1e-5, abs=1e-7)
    assert_close(published(dir_split, 1), published(dir_whole, 1))
    base = published_base(tiny_model_dir)
    assert any(not torch.equal(base[k], published(dir_split, 1)[k]) for k in base)


def published_base(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_step_scalars_are_written_to_tensorboard(tmp_path, tiny_model_dir, redis_server,
                                                 scorer):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, record, run_dir = one_step(tmp_path, "tb", tiny_model_dir, redis_server, scorer,
                                        "trainer.tensorboard=true")
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {f"train/{k}" for k in scalars(record)}
    assert "train/loss" in tags and "train/grad_norm" in tags and "train/anchor_rotated" in tags
    (loss,) = acc.Scalars("train/loss")
    assert loss.step == 1 and loss.value == pytest.approx(record["loss"], rel=1e-6)
