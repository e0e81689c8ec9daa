"""`t1 eval --data` on a benchmark file the user brings: the table, the numbers and a per-problem
file whose records add up to the table; bad data is refused before an engine starts."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.common.config import REPO_ROOT

pytestmark = pytest.mark.slow


def math500_like(path, n):
    rows = [{"problem": f"{a}+{a + 1}", "solution": f"$\\boxed{{{2 * a + 1}}}$", "subject": "Prealgebra",
             "level": 1, "unique_id": f"test/prealgebra/{a}.json"} for a in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_eval_on_a_math_file_writes_the_table_and_every_problem(tmp_path, tiny_model_dir):
    rows = math500_like(tmp_path / "math500.jsonl", 6)
    out = tmp_path / "eval"
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    res = subprocess.run([sys.executable, "-m", "services.cli", "eval", "--model", str(tiny_model_dir),
                          "--data", str(tmp_path / "math500.jsonl"), "--k", "3", "--out", str(out),
                          "--config", "quick", "--set", "generator.gpu_memory_utilization=0.1",
                          "--set", "generator.max_tokens=16"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "6 problems of math500.jsonl" in res.stdout
    # progress per problem: greedy and samples of each (the budget curve reuses the greedy pass)
    assert "12/12" in res.stderr, res.stderr
    summary = json.loads((out / "eval.json").read_text())[str(tiny_model_dir)]
    acc = summary["accuracy"]
    assert acc["n_problems"] == 6 and acc["k"] == 3
    records = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(6))  # file order
    assert [r["gold"] for r in records] == [str(2 * a + 1) for a in range(6)]
    assert all(r["model"] == str(tiny_model_dir) and r["prompt"] == f"Q:{rows[i]['problem']}\nA:"
               for i, r in enumerate(records))
    assert all(len(r["samples"]) == 3 and r["samples"][0]["finish_reason"] in ("stop", "length")
               for r in records)
    # the per-problem file is what the table was computed from
    assert sum(r["greedy"]["correct"] for r in records) / 6 == pytest.approx(acc["greedy"])
    assert sum(r["pass1"] for r in records) / 6 == pytest.approx(acc["pass1"])
    assert all(r["pass1"] == sum(x["correct"] for x in r["samples"]) / 3 for r in records)
    for budget, value in summary["scaling"].items():
        assert sum(r["budgets"][budget] for r in records) / 6 == pytest.approx(value)
    assert (out / "scaling.png").stat().st_size > 0


def test_eval_refuses_bad_data_before_the_engine_starts(tmp_path, tiny_model_dir):
    runner = CliRunner()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "1+1", "solution": "two"}) + "\n")

    def refused(*args: str) -> str:
        res = runner.invoke(app, [*args, "--model", str(tiny_model_dir)])
        assert res.exit_code == 2, res.output
        return " ".join(res.output.split())  # rich wraps long lines

    assert "bad data" in refused("eval", "--data", str(bad))
    assert "bad.jsonl: record 1: the solution has no complete" in refused("eval", "--data", str(bad))
    assert "no such dataset" in refused("scaling", "--data", str(tmp_path / "none.jsonl"))
    assert "--split needs --data" in refused("eval", "--split", "test")
