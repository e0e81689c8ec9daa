"""The README's main job, `t1 demo`, end to end on the quick preset: a real run, its report."""

import os
import re
import subprocess
import sys

import pytest

from services.common.net import free_port

pytestmark = pytest.mark.slow


def test_quick_demo_writes_a_report_with_its_findings(tmp_path):
    run_dir = tmp_path / "demo"
    cmd = [sys.executable, "-m", "services.cli", "demo", "--quick", "--set", f"run_dir={run_dir}",
           "--set", f"generator.port={free_port()}", "--set", f"verifier.port={free_port()}",
           "--set", f"trainer.port={free_port()}"]
    # a fresh shell's environment: this pytest process may already have joined a torch.distributed
    # group (tests/gpu), whose MASTER_PORT its store still holds
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # the evaluation engine shuts down cleanly (vLLM once logged a dead-engine traceback here)
    assert "EngineDeadError" not in done.stdout + done.stderr
    report = (run_dir / "report.md").read_text()
    for png in ("training.png", "scaling.png"):
        assert (run_dir / png).stat().st_size > 10_000
    # every stage ran: plateau-watched SFT, RL, the equal-compute SFT arm, evaluation
    assert re.search(r"SFT plateau: greedy accuracy on \d+ validation problems by step: 20: ", report)
    assert "| SFT + equal compute |" in report and "| RL v3 |" in report
    assert re.search(r"RL vs SFT, greedy: [+-]\d+\.\d points ± \d+\.\d \(standard error", report)
    assert re.search(r"more SFT steps instead: greedy [+-]\d+\.\d points", report)
    assert "does not rise" in report or "rises with the reasoning budget" in report
    assert "'trained': 12" in report  # 3 steps x 4 prompts, accounted in the ledger
