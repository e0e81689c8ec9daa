"""Sharding of sequences over ranks (micro-batching: tests/unit/test_policy.py), precision and
DeepSpeed's extension builds."""

import pytest

from services.trainer.dist import balanced_shards


def test_shards_balance_sequences_by_tokens_deterministically():
    sizes = [12, 4, 4, 8]
    parts = balanced_shards(sizes, 2)
    assert sorted(i for p in parts for i in p) == [0, 1, 2, 3]
    assert sorted(sum(sizes[i] for i in p) for p in parts) == [12, 16]  # the best split
    assert all(p == sorted(p) for p in parts)  # input order kept within a part
    assert balanced_shards(sizes, 2) == parts  # every rank computes the same split
    with pytest.raises(ValueError):
        balanced_shards(sizes[:1], 2)


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


def test_single_process_rendezvous_retries_a_port_taken_meanwhile(tmp_path):
    """The port picked for a single-process run can be taken by another process before the
    store binds it (seen under load): a fresh port is tried instead of failing the run."""
    import subprocess
    import sys

    script = tmp_path / "rdv.py"
    script.write_text(
        "import os, socket\n"
        "import services.trainer.ds_engine as ds\n"
        "from services.common.net import free_port\n"
        "taken = socket.socket(); taken.bind(('127.0.0.1', 0)); taken.listen()\n"
        "ports = iter([taken.getsockname()[1]])\n"
        "ds.free_port = lambda: next(ports, None) or free_port()\n"
        "for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_PORT'): os.environ.pop(k, None)\n"
        "ds.init_distributed()\n"
        "import torch.distributed as dist\n"
        "assert dist.is_initialized() and int(os.environ['MASTER_PORT']) != taken.getsockname()[1]\n"
        "print('ok')\n")
    # a hang guard, not a time limit: importing DeepSpeed may build its shm op first, and under
    # load (two engines beside it) that took over 120 s once
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    assert "was taken meanwhile" in out.stderr
