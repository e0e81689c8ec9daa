"""`t1 synthesize` against the real generator (vLLM serving a briefly fine-tuned tiny model over
its OpenAI API, as `t1 generator` does) and the real verifier, over REST and in process."""

import asyncio
import json

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.common.config import GeneratorConfig, load_config
from services.common.http import service_app
from services.common.net import free_port
from services.common.verifier_client import VerifierClient
from services.data.loaders import load_problems
from services.data.synthesize import (
    FAILED,
    SynthesisConfig,
    end_at_last_box,
    synthesize,
    template_trace,
    unbox,
)
from services.data.tasks import AdditionTask
from services.generator.engine import RolloutEngine
from services.generator.http import LoopServer, add_openai_error_handlers, mount_openai
from services.trainer.sft import build_sft_examples, load_sft_records, run_sft
from services.verifier.extract import last_boxed

ATTEMPTS = 4
PROBLEMS = [AdditionTask(1, 2, seed=5).problem(i) for i in range(4)]
GOLD = {p.prompt: str(p.answer) for p in PROBLEMS}


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory, tiny_model_dir):
    """The tiny model after 150 SFT steps on 1-digit addition traces: right about 70% of the time
    greedily, so a few samples per problem give a mix of right and wrong attempts."""
    root = tmp_path_factory.mktemp("synth")
    cfg = load_config("quick", [f"run_dir={root / 'run'}", "trainer.sft_steps=150", "trainer.sft_batch=32",
                                "trainer.sft_lr=3e-3"], environ={})
    data = build_sft_examples(AdditionTask(1, 2, seed=1), 500, seed=1)
    return run_sft(cfg, tiny_model_dir, root / "sft", data=data)


@pytest.fixture(scope="module")
def endpoint(sft_model):
    """The generator's HTTP port: vLLM's OpenAI routes mounted on the engine (as in `t1 generator`)."""
    engine = RolloutEngine(str(sft_model), GeneratorConfig(gpu_memory_utilization=0.1))
    app_ = service_app("generator", lambda: {"ready": True})
    add_openai_error_handlers(app_)
    port = free_port()
    server = LoopServer(app_, "127.0.0.1", port, engine.loop).start()
    engine.loop.run(mount_openai(app_, engine, "t1-tiny"))
    yield f"http://127.0.0.1:{port}"
    server.stop()
    engine.shutdown()


@pytest.fixture(scope="module")
def verifier_url(start_verifier) -> str:
    return start_verifier()[1]


@pytest.fixture
def data_file(tmp_path):
    """Half GSM8K records (the loader formats the question like the task's prompts), half plain."""
    records = [{"question": "+".join(map(str, p.operands)), "answer": f"so\n#### {p.answer}"} for p in PROBLEMS[:2]]
    records += [{"prompt": p.prompt, "gold": p.answer} for p in PROBLEMS[2:]]
    f = tmp_path / "problems.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert [p.prompt for p in load_problems(f)] == [p.prompt for p in PROBLEMS]
    return f


def check_records(out, verifier_url: str) -> list[dict]:
    """Every record is SFT data ending in a boxed answer the verifier accepts for its gold."""
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert load_sft_records(out) == [(r["prompt"], r["response"]) for r in records]
    for r in records:
        answer = last_boxed(r["response"])
        assert r["response"].endswith(f"\\boxed{{{answer}}}")
        assert r["response"].count("\\boxed{") == 1  # wrong attempts keep their answer, not a box
        assert r["attempts"] == ATTEMPTS and 1 <= r["correct_attempts"] <= ATTEMPTS
        if r["correct_attempts"] < ATTEMPTS:  # trial and error: a failed attempt comes first
            assert FAILED.split(":")[0] in r["response"]
    with VerifierClient(verifier_url) as client:
        verdicts = client.verify([{"response": r["response"], "gold": GOLD[r["prompt"]]} for r in records])
    assert all(v.correct for v in verdicts)
    return records


@pytest.mark.slow
def test_cli_writes_verified_trial_and_error_traces(endpoint, data_file, tmp_path, verifier_url):
    out = tmp_path / "traces.jsonl"
    result = CliRunner().invoke(app, [
        "synthesize", "--data", str(data_file), "--endpoint", endpoint, "--endpoint", endpoint + "/v1",
        "--out", str(out), "--attempts", str(ATTEMPTS), "--verifier-url", verifier_url,
        "--max-tokens", "48", "--critique-tokens", "32", "--temperature", "1.0"])
    assert result.exit_code == 0, result.output
    records = check_records(out, verifier_url)
    assert records, "no problem had a correct attempt"
    assert f"kept {len(records)}/4 problems" in result.output
    assert any(r["correct_attempts"] < ATTEMPTS for r in records), "no trace shows a wrong attempt"


@pytest.mark.slow
def test_in_process_verifier_and_llm_rewrite_fallback(endpoint, data_file, tmp_path, verifier_url):
    """The tiny model cannot rewrite (its rewrites fail verification or overflow its 256-token
    context): every kept trace comes from the template, and the counts add up."""
    out = tmp_path / "traces.jsonl"
    cfg = SynthesisConfig(attempts=ATTEMPTS, model="t1-tiny", max_tokens=48, critique_tokens=32,
                          temperature=1.0, rewrite="llm")
    stats = asyncio.run(synthesize(load_problems(data_file), [endpoint], out, cfg))
    records = check_records(out, verifier_url)
    assert stats.problems == 4 and stats.attempts == 4 * ATTEMPTS
    assert stats.kept == len(records) >= 1 and stats.llm_rewrites == 0
    assert stats.kept + stats.no_correct_attempt + stats.trace_rejected == stats.problems
    assert sum(r["correct_attempts"] for r in records) <= stats.correct_attempts


def test_only_the_final_answer_is_boxed():
    trace = template_trace([("7+5=11 \\boxed{11}", "11-5=6, not 7", "11")],
                           ("7+5=12 so \\boxed{\\frac{24}{2}}", "12-5=7"), "\\frac{24}{2}")
    assert trace == ("7+5=11 11\nLet me verify the answer by 11-5=6, not 7\n"
                     "That check fails: 11 is not right. Let me try again.\n"
                     "7+5=12 so \\frac{24}{2}\nLet me verify the answer by 12-5=7\n"
                     "The check passes, so the answer is \\boxed{\\frac{24}{2}}")
    assert unbox("a \\fbox{x^{2}} b \\boxed{1") == "a x^{2} b 1"  # unclosed (truncated) too
    # an LLM rewrite: cut after its last box, earlier boxes unboxed
    assert end_at_last_box("try \\boxed{3}, no: \\boxed{ {4} } as 2+2. Done.") == "try 3, no: \\boxed{{4}}"
    assert end_at_last_box("no answer \\boxed{4") == "no answer \\boxed{4"


def test_bad_input_exits_2_with_a_clear_message(data_file, tmp_path):
    runner = CliRunner()
    dead = f"http://127.0.0.1:{free_port()}"
    args = ["synthesize", "--out", str(tmp_path / "o.jsonl")]
    result = runner.invoke(app, args + ["--data", str(data_file), "--endpoint", dead])
    assert result.exit_code == 2
    assert f"endpoint {dead} unreachable" in " ".join(result.output.split())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "1+1"}\n')
    result = runner.invoke(app, args + ["--data", str(bad), "--endpoint", dead])
    assert result.exit_code == 2 and "record 1: unknown schema" in " ".join(result.output.split())
    result = runner.invoke(app, args + ["--data", str(tmp_path / "missing.jsonl"), "--endpoint", dead])
    assert result.exit_code == 2 and "no such dataset" in result.output


@pytest.mark.slow
def test_filter_keeps_the_problems_the_model_does_not_solve(sft_model, tmp_path):
    """`t1 filter`: a problem whose gold no answer reaches (a wrong gold) has pass rate 0 and is
    kept; the easy ones the SFT model mostly solves are dropped."""
    sums = [(a, b) for a in range(1, 5) for b in range(1, 4)]
    rows = [{"problem": f"{a}+{b}", "answer": str(a + b)} for a, b in sums]
    rows += [{"problem": f"{a}+{b}", "answer": str(a + b + 100)} for a, b in sums[:3]]  # unreachable
    data, out = tmp_path / "p.jsonl", tmp_path / "hard.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(app, ["filter", "--model", str(sft_model), "--data", str(data), "--out", str(out),
                                   "--k", "8", "--max-pass", "0.3", "--config", "quick",
                                   "--set", "generator.gpu_memory_utilization=0.1",
                                   "--set", "generator.max_tokens=48"])
    assert res.exit_code == 0, res.output
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["pass_rate"] <= 0.3 and r["pass_rate"] * 8 == int(r["pass_rate"] * 8) for r in kept)
    unreachable = [r for r in kept if int(r["answer"]) > 100]
    assert len(unreachable) == 3 and all(r["pass_rate"] == 0.0 for r in unreachable)
    assert len(kept) < len(rows)  # the model solves some of the true ones more often than 0.3
    assert f"kept {len(kept)}/{len(rows)} problems" in " ".join(res.output.split())
    assert load_problems(out)[0].prompt.startswith("Q:")  # the output is RL data again
