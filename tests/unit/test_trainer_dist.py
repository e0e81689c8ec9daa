"""Sharding and micro-batching of groups: whole groups only, balanced, within the token budget."""

import pytest

from services.common.schemas import Prompt, RolloutGroup, Sample, ScoredGroup, Verdict
from services.trainer.dist import group_tokens, micro_batches, shard


def group(i: int, prompt_len: int, resp_lens: list[int]) -> ScoredGroup:
    samples = [Sample(text="", token_ids=[1] * n, logprobs=[0.0] * n, finish_reason="stop")
               for n in resp_lens]
    prompt = Prompt(prompt_id=f"p{i}", index=i, text="", gold="0")
    rollout = RolloutGroup(prompt=prompt, prompt_token_ids=[1] * prompt_len, samples=samples,
                           policy_version=0, generator_id="t", temperature=1.0, top_p=1.0)
    verdict = Verdict(correct=True, reward=1.0, extracted=None, status="ok")
    return ScoredGroup(rollout=rollout, verdicts=[verdict] * len(samples))


def test_group_tokens_counts_padded_rows():
    assert group_tokens(group(0, 3, [2, 5])) == 2 * (3 + 5)


def test_shard_keeps_groups_whole_and_balances_tokens():
    gs = [group(0, 2, [10] * 4), group(1, 2, [2] * 4), group(2, 2, [2] * 4), group(3, 2, [6] * 4)]
    parts = shard(gs, 2)
    assert sorted(g.rollout.prompt.prompt_id for p in parts for g in p) == ["p0", "p1", "p2", "p3"]
    loads = [sum(group_tokens(g) for g in p) for p in parts]
    assert sorted(loads) == [48, 64]  # 112 tokens: the best split of these sizes
    assert shard(gs, 2) == parts  # deterministic: every rank computes the same split
    with pytest.raises(ValueError):
        shard(gs[:1], 2)


def test_micro_batches_pack_consecutive_groups_up_to_the_budget():
    gs = [group(i, 2, [3, 3]) for i in range(5)]  # 10 padded tokens each
    assert [len(m) for m in micro_batches(gs, 0)] == [5]
    assert [len(m) for m in micro_batches(gs, 25)] == [2, 2, 1]
    assert [len(m) for m in micro_batches(gs, 1)] == [1] * 5  # over budget: one group each
    mixed = [group(0, 2, [3, 3]), group(1, 2, [18, 18])]  # padding to 20 makes 2 x 2 x 20 = 80
    assert [len(m) for m in micro_batches(mixed, 60)] == [1, 1]


def test_precision_auto_is_bf16_on_gpus_and_fp32_on_the_cpu():
    import torch

    from services.common.config import TrainerConfig
    from services.trainer.ds_engine import ds_config

    assert ds_config(TrainerConfig(), 1e-4)["bf16"] == {"enabled": torch.cuda.is_available()}
    assert ds_config(TrainerConfig(precision="bf16"), 1e-4)["bf16"] == {"enabled": True}
    assert ds_config(TrainerConfig(precision="fp32"), 1e-4)["bf16"] == {"enabled": False}


def test_extension_builds_stay_in_this_environment_and_stale_locks_go(tmp_path, monkeypatch):
    import os
    import sys
    import time
    from pathlib import Path

    from services.trainer.ds_engine import STALE_BUILD_LOCK_S, prepare_extension_builds

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    (tmp_path / "fused_adam").mkdir()
    (tmp_path / "shm_comm").mkdir()
    stale, fresh = tmp_path / "fused_adam" / "lock", tmp_path / "shm_comm" / "lock"
    stale.touch()
    fresh.touch()
    old = time.time() - STALE_BUILD_LOCK_S - 60
    os.utime(stale, (old, old))
    assert prepare_extension_builds() == tmp_path
    assert not stale.exists() and fresh.exists()  # a build in progress keeps its lock
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert prepare_extension_builds() == Path(sys.prefix) / "torch_extensions"
