"""Math problems (prompt + gold answer) from local dataset files, for RL prompts and evaluation.

Formats: ``.jsonl``, ``.json`` (a list of records, or JSON lines), ``.parquet`` (needs pyarrow)
and a directory written by ``datasets``' ``save_to_disk`` (needs ``datasets``); both are pinned
project dependencies, and an environment without them gets an error that says what to install.

Record schemas, tried in this order:

- plain: ``{"prompt", "gold" | "answer"}`` -- the prompt is used as is (it is already a prompt;
  in the chat style it is the user's whole message);
- MATH: ``{"problem", "answer"}`` or ``{"problem", "solution"}`` -- gold is the explicit answer,
  else the content of the solution's last ``\\boxed{}``;
- GSM8K: ``{"question", "answer"}`` -- gold is the text after ``####``, thousands commas removed.

The problem becomes a prompt through a ``PromptFormat`` (the config's ``prompt`` section; by
default the procedural task's ``Q:...\\nA:`` shape).

SFT pairs (prompt/response, messages) are ``services.trainer.sft.load_sft_records``' job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.common.config import PromptConfig
from services.data.prompt_format import PromptFormat
from services.verifier.extract import last_boxed


@dataclass(frozen=True)
class MathProblem:
    prompt: str  # what the model sees, formatted
    gold: str
    source: str  # the file or directory it came from (with the split, if any)
    index: int  # position of the record in its source
    problem: str = ""  # the statement before formatting (a verbatim record: its prompt as written)
    verbatim: bool = False  # the record was a prompt already (prompt/gold)


def format_prompt(problem_text: str) -> str:
    """The default plain format: the ``Q:...\\nA:`` shape of the procedural task's prompts."""
    return DEFAULT_FORMAT.problem(problem_text)


def load_problems(path: str | Path, split: str | None = None, limit: int | None = None,
                  fmt: PromptFormat | None = None) -> list[MathProblem]:
    """Problems from ``path`` (see the module doc), formatted by ``fmt`` (default: the plain
    ``Q:...\\nA:``); ``split`` picks one of a ``datasets`` directory's splits; ``limit`` keeps the
    first N. Raises FileNotFoundError, ValueError (bad record: file, record number and keys) or
    ImportError (a reader that is not installed)."""
    fmt = fmt or DEFAULT_FORMAT
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such dataset: {path}")
    if path.is_dir():
        records, source = _datasets_dir(path, split), f"{path.name}/{split}" if split else path.name
    else:
        if split is not None:
            raise ValueError(f"{path}: --split applies to a datasets directory, not a file")
        records, source = _file_records(path), path.name
    problems = []
    for n, rec in records:
        if limit is not None and len(problems) >= limit:
            break
        statement, verbatim, gold = _problem(rec, f"{path}: record {n}")
        prompt = fmt.verbatim(statement) if verbatim else fmt.problem(statement)
        problems.append(MathProblem(prompt, gold, source, n - 1, statement if verbatim else statement.strip(),
                                    verbatim))
    if not problems and limit != 0:
        raise ValueError(f"{path}: no records")
    return problems


def _file_records(path: Path) -> Iterator[tuple[int, object]]:
    """(1-based record number, record) pairs."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return enumerate(_parquet_rows(path), 1)
    if suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: unsupported file type {suffix!r}; expected .jsonl, .json or .parquet")
    text = path.read_text()
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            return enumerate(json.loads(text), 1)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    return _json_lines(path, text)  # .json files are often JSON lines too (as `datasets` writes)


def _json_lines(path: Path, text: str) -> Iterator[tuple[int, object]]:
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: record {n}: not JSON ({exc.msg})") from None


def _parquet_rows(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading parquet needs pyarrow: pip install pyarrow "
                          "(a project dependency: pip install -e . brings it)") from None
    return pq.read_table(path).to_pylist()


def _datasets_dir(path: Path, split: str | None) -> Iterator[tuple[int, object]]:
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{path}: a directory is read as a `datasets` save_to_disk folder, which "
                          "needs datasets: pip install datasets (a project dependency)") from None
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split is None and len(data) == 1:
            split = next(iter(data))
        if split not in data:
            raise ValueError(f"{path}: pick a split with --split: {', '.join(data)}"
                             + (f" (no {split!r})" if split else ""))
        data = data[split]
    elif split is not None:
        raise ValueError(f"{path}: a single dataset without splits; drop --split")
    return enumerate(data, 1)


def _problem(rec: object, where: str) -> tuple[str, bool, str]:
    """(statement, whether it is a prompt already, gold) of one record in any known schema."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected an object, got {type(rec).__name__}")
    # Columnar formats (parquet, datasets) give every row every column: absent ones are None.
    rec = {k: v for k, v in rec.items() if v is not None}
    verbatim = False
    if "prompt" in rec and ("gold" in rec or "answer" in rec):
        text, gold, verbatim = str(rec["prompt"]), rec.get("gold", rec.get("answer")), True
    elif "problem" in rec and ("answer" in rec or "solution" in rec):
        text = str(rec["problem"])
        gold = rec["answer"] if rec.get("answer") not in (None, "") else _boxed_gold(rec, where)
    elif "question" in rec and "answer" in rec:
        text, gold = str(rec["question"]), _gsm8k_gold(str(rec["answer"]))
    else:
        raise ValueError(f"{where}: unknown schema (keys {sorted(rec)}); expected prompt+gold/answer, "
                         "problem+solution/answer (MATH) or question+answer (GSM8K)")
    gold = str(gold).strip()
    if not gold:
        raise ValueError(f"{where}: empty gold answer")
    if not text.strip():
        raise ValueError(f"{where}: empty problem")
    return text, verbatim, gold


DEFAULT_FORMAT = PromptFormat(PromptConfig())


def _boxed_gold(rec: dict, where: str) -> str:
    boxed = last_boxed(str(rec["solution"]))
    if boxed is None:
        raise ValueError(f"{where}: the solution has no complete \\boxed{{}} answer and there is no 'answer'")
    return boxed


def _gsm8k_gold(answer: str) -> str:
    _, sep, final = answer.rpartition("####")
    return final.strip().replace(",", "") if sep else answer
