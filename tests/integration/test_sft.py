"""SFT data loading in the common formats, and an SFT run on the DeepSpeed engine."""

import json
import logging
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.sft import load_sft_records, run_sft, tokenize_pairs


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_common_schemas_load(tmp_path, tiny_model_dir):
    f = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Q:1+1\nA:", "response": "\\boxed{2}"},
        {"problem": "What is 2+2?", "solution": "2+2=4, so \\boxed{4}"},
        {"question": "3 apples and 4 more?", "answer": "3+4=7\n#### 7"},
        {"messages": [{"role": "user", "content": "5+5?"}, {"role": "assistant", "content": "\\boxed{10}"}]},
    ])
    pairs = load_sft_records(f, AutoTokenizer.from_pretrained(tiny_model_dir))
    assert pairs[0] == ("Q:1+1\nA:", "\\boxed{2}")  # a prompt already: as is
    # problems are formatted as RL and evaluation format them (the default Q:...\nA:)
    assert pairs[1][0] == "Q:What is 2+2?\nA:" and pairs[1][1].endswith("\\boxed{4}")
    assert pairs[2] == ("Q:3 apples and 4 more?\nA:", "3+4=7 \\boxed{7}")
    assert pairs[3] == ("user: 5+5?\nassistant: ", "\\boxed{10}")  # no chat template: plain roles


@pytest.mark.parametrize("line,message", [
    ('{"foo": 1}', "unknown schema"), ("not json", "not JSON"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "assistant"),
])
def test_bad_records_name_the_line(tmp_path, line, message):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "a", "response": "b"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as err:
        load_sft_records(f)
    assert "bad.jsonl:2" in str(err.value)


def test_loss_is_on_response_tokens_only(tiny_model_dir):
    from services.trainer.packing import pack

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    (example,) = tokenize_pairs(tok, [("Q:1+1\nA:", "\\boxed{2}")])
    batch = pack([example], 0, tok.eos_token_id)
    n_prompt = len(tok("Q:1+1\nA:", add_special_tokens=False)["input_ids"])
    assert batch.n_tokens == len("\\boxed{2}") + 1  # + EOS; no prompt token is a target
    assert batch.score_at.tolist() == list(range(n_prompt - 1, n_prompt - 1 + batch.n_tokens))


def test_truncation_cuts_the_response_tail_and_counts():
    from services.trainer.sft import truncate_examples

    examples = [([1, 2], [3, 4, 5, 6]), ([1], [2]), ([1, 2, 3, 4, 5], [6])]
    out, cut, dropped = truncate_examples(examples, 4)
    assert out == [([1, 2], [3, 4]), ([1], [2])] and (cut, dropped) == (1, 1)
    assert truncate_examples(examples, 0) == (examples, 0, 0)
    with pytest.raises(ValueError, match="sft_max_seq_len"):
        truncate_examples(examples[2:], 3)


def test_schedule_warms_up_then_decays():
    from services.common.config import TrainerConfig
    from services.trainer.sft import lr_at

    tc = TrainerConfig(sft_warmup_steps=10, sft_schedule="cosine", sft_min_lr_ratio=0.1)
    rates = [lr_at(s, 110, 1.0, tc) for s in range(1, 111)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[59] == pytest.approx(0.55, abs=0.01)  # half way through the decay
    assert rates[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert lr_at(50, 100, 2.0, TrainerConfig()) == 2.0  # constant, no warm-up: the default


def test_sft_from_jsonl_lowers_the_loss_and_saves_a_loadable_model(tmp_path, make_config, tiny_model_dir):
    records = [{"prompt": f"Q:{a}+{a}\nA:", "response": f"\\boxed{{{2 * a}}}"} for a in range(20)]
    pairs = load_sft_records(write_jsonl(tmp_path / "d.jsonl", records))
    cfg = make_config("trainer.sft_steps=30", "trainer.sft_batch=8", "trainer.sft_lr=3e-3")
    losses = []
    out = run_sft(cfg, tiny_model_dir, tmp_path / "sft", data=pairs,
                  progress=lambda step, loss: losses.append(loss))
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert not torch.equal(tuned.model.embed_tokens.weight, base.model.embed_tokens.weight)
    tok = AutoTokenizer.from_pretrained(out)  # the tokenizer travels with the model
    assert tok.decode(tok("Q:3+3\nA:", add_special_tokens=False)["input_ids"]) == "Q:3+3\nA:"


def test_plateau_rule():
    from services.trainer.sft import Plateau

    scores = iter([0.1, 0.3, 0.5, 0.50, 0.505, 0.51, 0.9])
    p = Plateau(evaluate=lambda _m: next(scores), every=10, patience=3, min_delta=0.01)
    model = torch.nn.Linear(1, 1)
    stops = [p.reached(step, model) for step in (10, 20, 30, 40, 50, 60)]
    # at 60 the last three (0.50, 0.505, 0.51) add only 0.01 to the best before them (0.5)
    assert stops == [False, False, False, False, False, True]
    assert model.training  # evaluation left the model in the mode it found it


def test_plateau_after_a_restart_needs_patience_new_scores():
    from services.trainer.sft import Plateau

    scores = iter([0.5, 0.4, 0.4, 0.45, 0.45, 0.7, 0.7, 0.7])
    p = Plateau(evaluate=lambda _m: next(scores), every=10, patience=2, min_delta=0.01, lr_decays=1)
    model = torch.nn.Linear(1, 1)
    assert [p.reached(s, model) for s in (10, 20, 30)] == [False, False, True]
    p.restart(30)
    # 40 would already pass the rule on (0.4, 0.45) vs 0.5 but it has only one score since
    # the restart; 50 has two, neither above 0.5: plateau again
    assert [p.reached(s, model) for s in (40, 50)] == [False, True]
    p.restart(50)
    # 70 rises above the best before the restart; 80 adds nothing to 60's
    assert [p.reached(s, model) for s in (60, 70, 80)] == [False, False, True]


def test_no_plateau_before_min_steps():
    from services.trainer.sft import Plateau

    # the flat start (0.11, 0.10, 0.12) would be a plateau at patience 2; min_steps waits it out
    scores = iter([0.11, 0.10, 0.12, 0.26, 0.23, 0.37, 0.37, 0.36])
    p = Plateau(evaluate=lambda _m: next(scores), every=100, patience=2, min_delta=0.01, min_steps=400)
    model = torch.nn.Linear(1, 1)
    stops = [p.reached(s, model) for s in range(100, 900, 100)]
    assert stops == [False] * 7 + [True]
    assert [s for s, _ in p.history] == list(range(100, 900, 100))  # scored every time
    early = Plateau(evaluate=lambda _m: 0.1, every=100, patience=2, min_delta=0.01)
    assert [early.reached(s, model) for s in (100, 200, 300)] == [False, False, True]


def test_sft_stops_at_the_plateau_and_the_greedy_evaluator_batches_exactly(tmp_path, make_config,
                                                                          tiny_model_dir, caplog):
    from services.common.config import load_config
    from services.evaluation import greedy_accuracy_hf, greedy_hf, heldout_problems
    from services.trainer.sft import Plateau
    from services.verifier.scoring import Scorer

    cfg = make_config("trainer.sft_steps=400", "trainer.sft_batch=16", "trainer.sft_lr=3e-3",
                      "task.digits=1")
    problems = heldout_problems(cfg, 24)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    scorer = Scorer(load_config("quick", environ={}).verifier)
    try:
        plateau = Plateau(lambda m: greedy_accuracy_hf(m, tok, problems, 24, scorer), every=20,
                          patience=2, min_delta=1.0,  # nothing can add a whole point: plateau at 60
                          lr_decays=1)  # and after a lower rate, at 100
        with caplog.at_level(logging.INFO, logger="services.trainer.sft"):
            out = run_sft(cfg, tiny_model_dir, tmp_path / "sft", plateau=plateau)
        assert [step for step, _ in plateau.history] == [20, 40, 60, 80, 100]
        assert plateau.restarts == [60]
        # the rate the optimizer holds after the first plateau, as the event read it back
        lowered = [r.fields for r in caplog.records if r.getMessage() == "sft plateau: lower lr"]
        assert lowered == [{"step": 60, "lr": pytest.approx(3e-3 * 0.25)}]
        model = AutoModelForCausalLM.from_pretrained(out)
        prompts = [p.prompt for p in problems]
        batched = greedy_hf(model, tok, prompts, 24, batch=24)
        assert batched == [greedy_hf(model, tok, [p], 24)[0] for p in prompts]  # left padding changes nothing
        assert len({text for text, _ in batched}) > 1  # not one degenerate output for everything
        # the saved model is the one scored last
        assert greedy_accuracy_hf(model, tok, problems, 24, scorer) == pytest.approx(plateau.history[-1][1])
    finally:
        scorer.close()
