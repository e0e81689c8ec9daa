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


def test_step_record_counts_what_the_batch_held():
    import torch

    from services.common.schemas import Prompt, RolloutGroup, Sample, ScoredGroup, Verdict
    from services.trainer.admission import Batch
    from services.trainer.rl import step_record

    def group(i, version, rewards):
        samples = [Sample(text="x", token_ids=[1, 2], logprobs=[-1.0, -1.0], finish_reason="stop")
                   for _ in rewards]
        rollout = RolloutGroup(prompt=Prompt(prompt_id=f"p{i}", index=i, text="q", gold="1"),
                               prompt_token_ids=[5], samples=samples, policy_version=version,
                               generator_id="g", temperature=1.0, top_p=1.0)
        verdicts = [Verdict(correct=r > 0, reward=r, extracted="1", status="ok",
                            components={"correct": float(r > 0)}) for r in rewards]
        return ScoredGroup(rollout=rollout, verdicts=verdicts)

    batch = Batch(entry_ids=["a", "b"], groups=[group(0, 4, [1.0, 0.0]), group(1, 2, [1.0, 1.0, 0.0])],
                  offered=8)  # 5 kept of 8 generated
    fb = {"loss": 0.25, "tokens": 10, "advantages": torch.tensor([1.0, -1.0, 0.5, 0.5, -1.0]),
          "seq_kl": torch.tensor([0.0, 0.2])}
    rec = step_record(5, batch, fb, compute_s=2.0, grad_norm=1.5)
    assert rec["step"] == 6 and rec["loss"] == 0.25 and rec["grad_norm"] == 1.5
    assert rec["kept_fraction"] == pytest.approx(5 / 8)
    assert rec["accuracy"] == pytest.approx(3 / 5) and rec["reward_correct"] == pytest.approx(3 / 5)
    assert rec["staleness_mean"] == pytest.approx(((5 - 4) + (5 - 2)) / 2) and rec["min_group_version"] == 2
    assert rec["tokens_per_s"] == pytest.approx(5.0) and rec["response_len"] == pytest.approx(2.0)
    assert rec["seq_kl_mean"] == pytest.approx(0.1) and rec["adv_abs_max"] == 1.0
    assert "advantages" not in rec and "advantages" in fb  # the loss's statistics are not consumed
