"""Dataset loading for RL prompts / evaluation: the MATH, GSM8K and plain schemas from jsonl, json
and parquet, gold extraction, and errors that name the file, the record and the keys seen."""

import json
import sys

import pytest

from services.data.loaders import MathProblem, format_prompt, load_problems
from services.data.tasks import AdditionTask

MATH = {"problem": "Simplify $\\frac{2}{4}$.",
        "solution": "First \\boxed{2/4} is not simplest; $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$."}
GSM8K = {"question": "A farm has 1,200 hens and 34 more. How many?", "answer": "1200+34=1234\n#### 1,234"}
PLAIN = {"prompt": "Q:12+34\nA:", "gold": 46}


def write(path, records):
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    elif path.suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys = list(dict.fromkeys(k for r in records for k in r))  # a column per key seen anywhere
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in records]), path)
    return path


def test_prompt_format_is_the_procedural_tasks():
    problem = AdditionTask(2, 2, seed=7).problem(3)
    assert format_prompt(" " + "+".join(map(str, problem.operands)) + "\n") == problem.prompt


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_each_schema_from_each_format(tmp_path, suffix):
    f = write(tmp_path / f"mix{suffix}", [MATH, GSM8K, PLAIN, {"problem": "2+2?", "answer": "4"}])
    problems = load_problems(f)
    assert problems == [
        MathProblem("Q:Simplify $\\frac{2}{4}$.\nA:", "\\frac{1}{2}", f.name, 0,
                    "Simplify $\\frac{2}{4}$."),  # the LAST box
        MathProblem("Q:A farm has 1,200 hens and 34 more. How many?\nA:", "1234", f.name, 1,
                    "A farm has 1,200 hens and 34 more. How many?"),
        MathProblem("Q:12+34\nA:", "46", f.name, 2, "Q:12+34\nA:", True),  # a prompt is taken as is
        MathProblem("Q:2+2?\nA:", "4", f.name, 3, "2+2?"),  # an explicit answer wins over the solution
    ]
    assert load_problems(f, limit=2) == problems[:2]


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # an environment without it: import fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    f = tmp_path / "train.parquet"
    f.write_bytes(b"PAR1")
    with pytest.raises(ImportError, match="train.parquet: reading parquet needs pyarrow: pip install pyarrow"):
        load_problems(f)


@pytest.mark.parametrize("solution,gold", [
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("so $x \\in \\boxed{\\left\\{1, \\{2\\}\\right\\}}$ done", "\\left\\{1, \\{2\\}\\right\\}"),
    ("\\fbox{1} then \\boxed{ {a}^{b_{c}} }", "{a}^{b_{c}}"),
])
def test_math_gold_is_the_last_box_with_nested_braces(tmp_path, solution, gold):
    f = write(tmp_path / "m.jsonl", [{"problem": "p", "solution": solution}])
    assert load_problems(f)[0].gold == gold


@pytest.mark.parametrize("answer,gold", [
    ("#### 1,000,000", "1000000"), ("a #### 3 then #### -2,5", "-25"), ("so 7\n####  12,345 ", "12345"),
    ("(1, 2)", "(1, 2)"),  # no ####: the whole answer, commas and all
])
def test_gsm8k_gold_follows_the_last_marker_without_commas(tmp_path, answer, gold):
    f = write(tmp_path / "g.jsonl", [{"question": "q", "answer": answer}])
    assert load_problems(f)[0].gold == gold


@pytest.mark.parametrize("suffix,content,message", [
    (".jsonl", '{"prompt": "a", "gold": "1"}\n\n{"text": "x", "label": 2}\n',
     r"bad\.jsonl: record 3: unknown schema \(keys \['label', 'text'\]\)"),
    (".jsonl", '{"prompt": "a", "gold": "1"}\nnot json\n', r"bad\.jsonl: record 2: not JSON"),
    (".json", '[{"prompt": "a", "gold": "1"}, {"problem": "p", "solution": "no box"}]',
     r"bad\.json: record 2: the solution has no complete \\boxed\{\} answer"),
    (".json", '[{"prompt": "a", "gold": " "}]', r"bad\.json: record 1: empty gold answer"),
    (".json", '[["a", "1"]]', r"bad\.json: record 1: expected an object, got list"),
    (".jsonl", '{"problem": "p", "solution": "\\\\boxed{1"}\n', r"record 1: the solution has no complete"),
    (".csv", "prompt,gold\n", r"unsupported file type '\.csv'"),
    (".jsonl", "\n", r"bad\.jsonl: no records"),
])
def test_bad_input_names_the_file_and_record(tmp_path, suffix, content, message):
    f = tmp_path / f"bad{suffix}"
    f.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_problems(f)


def test_missing_path_and_split_on_a_file_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such dataset"):
        load_problems(tmp_path / "nope.jsonl")
    f = write(tmp_path / "ok.jsonl", [PLAIN])
    with pytest.raises(ValueError, match="split applies to a datasets directory"):
        load_problems(f, split="test")


def test_a_directory_without_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="needs datasets: pip install datasets"):
        load_problems(tmp_path)


def test_a_datasets_directory_by_split(tmp_path):
    import datasets
    import pyarrow as pa

    # An explicit fingerprint: hashing the table with dill breaks on some dill/pyarrow pairs.
    splits = {name: datasets.Dataset(pa.Table.from_pylist([rec]), fingerprint=name)
              for name, rec in (("train", GSM8K), ("test", PLAIN))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "d"))
    assert load_problems(tmp_path / "d", split="test") == [MathProblem("Q:12+34\nA:", "46", "d/test", 0, "Q:12+34\nA:", True)]
    with pytest.raises(ValueError, match="pick a split with --split: train, test"):
        load_problems(tmp_path / "d")
