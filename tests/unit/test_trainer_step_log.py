"""Step records as scalars; W&B only when installed and asked for."""

import importlib.util

import pytest

from services.trainer.step_log import StepLogger, scalars


def test_scalars_are_the_numeric_fields_except_the_step():
    rec = {"step": 3, "loss": 0.5, "tokens": 7, "anchor_rotated": True, "grad_norm": None, "note": "x"}
    assert scalars(rec) == {"loss": 0.5, "tokens": 7.0, "anchor_rotated": 1.0}


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_project_without_wandb_only_warns(tmp_path, caplog):
    logger = StepLogger(tmp_path, tensorboard=False, wandb_project="t1")
    assert logger.wandb is None and "not installed" in caplog.text
    logger.log({"step": 1, "loss": 0.1})
    logger.close()
