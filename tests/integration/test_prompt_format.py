"""One prompt format for every stage: the same record becomes the same prompt tokens in SFT, in
RL (feeder -> Redis -> the generator's engine), in `t1 eval` and in `t1 scaling`, with the
model's chat template; chat-message SFT records keep their own roles."""

import json

import pytest
from transformers import AutoTokenizer

from services.common import streams
from services.common.config import load_config
from services.common.ledger import Ledger
from services.common.schemas import Prompt
from services.common.tokens import prompt_token_ids
from services.data.prompt_format import PromptFormat
from services.data.prompt_source import prompt_source
from services.trainer.feeder import Feeder
from services.trainer.sft import load_sft_records, tokenize_pairs

pytestmark = pytest.mark.slow
RECORDS = [{"problem": "What is $3+4$?", "solution": "$3+4=7$, so \\boxed{7}"},
           {"problem": "Solve $2x=10$.", "solution": "$x=5$, \\boxed{5}"}]


def test_sft_rl_eval_and_scaling_see_the_same_prompt_tokens(s, tmp_path, chat_model_dir):
    from services.cli import _eval_setup
    from services.generator.engine import RolloutEngine

    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    sets = [f"model.path={chat_model_dir}", f"data.train={data}", f"data.eval={data}", "prompt.style=chat",
            "prompt.system=You are T1.", "generator.gpu_memory_utilization=0.1"]
    cfg = load_config("quick", sets, environ={})
    tok = AutoTokenizer.from_pretrained(chat_model_dir)
    expected = [f"<|im_start|>system\nYou are T1.<|im_end|>\n<|im_start|>user\n{r['problem']}\n"
                f"{cfg.prompt.instruction}<|im_end|>\n<|im_start|>assistant\n" for r in RECORDS]

    # SFT: `t1 sft --data` on the same records
    sft = [ids for ids, _ in tokenize_pairs(tok, load_sft_records(data, tok, PromptFormat(cfg.prompt, tok)))]
    assert sft == [prompt_token_ids(tok, text) for text in expected]
    # RL: the feeder's prompts, through Redis
    Feeder(s, Ledger(s), prompt_source(cfg, "train", tok), max_in_flight=2).top_up(0)
    rl = {p.origin: p.text for p in (e.msg for e in streams.Consumer(
        s, streams.PROMPTS, "generator", "g", Prompt).read(2, block_ms=200))}
    assert rl == {"math.jsonl#0": expected[0], "math.jsonl#1": expected[1]}
    # `t1 eval` and `t1 scaling` load their problems through the same setup
    config = tmp_path / "c.yaml"
    config.write_text("extends: quick\n")
    _, problems = _eval_setup(str(config), sets, [str(chat_model_dir)], None, None, None)
    assert [p.prompt for p in problems] == expected and [p.problem for p in problems] == [
        r["problem"] for r in RECORDS]
    # ... and the generator's engine encodes them as SFT did
    engine = RolloutEngine(str(chat_model_dir), cfg.generator)
    try:
        groups = engine.generate([rl["math.jsonl#0"], problems[1].prompt],
                                 engine.sampling_params(n=1, max_tokens=2, temperature=0.0, top_p=1.0))
    finally:
        engine.shutdown()
    assert [g.prompt_token_ids for g in groups] == sft


def test_chat_records_keep_their_roles_and_plain_records_stay_as_they_are(tmp_path, chat_model_dir):
    tok = AutoTokenizer.from_pretrained(chat_model_dir)
    cfg = load_config("quick", ["prompt.style=chat", "prompt.system=Injected?"], environ={})
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
                      {"role": "assistant", "content": "\\boxed{2}"}]},
        {"prompt": "Q:2+2\nA:", "response": "\\boxed{4}"},
    ]))
    (chat, _), (plain, _) = load_sft_records(data, tok, PromptFormat(cfg.prompt, tok))
    assert chat == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    # a record that is a prompt already is the user's message as it stands (no instruction added)
    assert plain == ("<|im_start|>system\nInjected?<|im_end|>\n<|im_start|>user\nQ:2+2\nA:<|im_end|>\n"
                     "<|im_start|>assistant\n")
    (p1, _), (p2, _) = load_sft_records(data, tok)  # the plain default: the prompt verbatim
    assert p2 == "Q:2+2\nA:" and p1.startswith("<|im_start|>system\nBe brief.")


def test_a_chat_style_without_a_template_and_a_template_without_a_problem_are_refused(tiny_model_dir):
    cfg = load_config("quick", ["prompt.style=chat"], environ={})
    with pytest.raises(ValueError, match="prompt.style=chat needs the model's chat template"):
        PromptFormat(cfg.prompt, AutoTokenizer.from_pretrained(tiny_model_dir))
    with pytest.raises(ValueError, match="has no {problem}"):
        load_config("quick", ['prompt.template="Question: {question}"'], environ={})
    plain = PromptFormat(load_config("quick", [r'prompt.template="Problem: {problem} {instruction}\nSolution:"'],
                                     environ={}).prompt)
    assert plain.problem(" $\\{1,2\\}$ ") == f"Problem: $\\{{1,2\\}}$ {plain.cfg.instruction}\nSolution:"


def test_synthesize_sends_the_same_prompt_and_writes_chat_records_sft_reads_back(tmp_path, chat_model_dir):
    from typer.testing import CliRunner

    from services.cli import app
    from services.data.loaders import load_problems
    from services.data.synthesize import sft_record

    tok = AutoTokenizer.from_pretrained(chat_model_dir)
    cfg = load_config("quick", ["prompt.style=chat", "prompt.system=You are T1."], environ={})
    fmt = PromptFormat(cfg.prompt, tok)
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*RECORDS, {"prompt": "Q:2+2\nA:", "gold": "4"}]))
    problems = load_problems(data, fmt=fmt)  # what `t1 synthesize` sends its endpoints: p.prompt
    assert problems[2].verbatim and problems[2].problem == "Q:2+2\nA:"
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps(sft_record(p, f"so \\boxed{{{p.gold}}}", fmt)) + "\n" for p in problems))
    assert all(list(json.loads(line)) == ["messages"] for line in traces.read_text().splitlines())
    sft = load_sft_records(traces, tok, fmt)
    assert [prompt for prompt, _ in sft] == [p.prompt for p in problems]  # SFT trains on RL's prompt
    assert [reply for _, reply in sft] == [f"so \\boxed{{{p.gold}}}" for p in problems]
    # the chat style needs the endpoint model's template, in one line
    result = CliRunner().invoke(app, ["synthesize", "--data", str(data), "--endpoint", "http://127.0.0.1:9",
                                      "--out", str(tmp_path / "o.jsonl"), "--set", "prompt.style=chat"])
    assert result.exit_code == 2 and "needs --tokenizer" in result.output
