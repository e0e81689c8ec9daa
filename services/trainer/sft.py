"""SFT on synthesized trial-and-error / self-verification chain-of-thought (T1 stage 1).

The dataset is fixed (``num_examples`` traces from a seed), as in T1 where CoT data is scarce;
training runs for ``steps`` minibatches over it on the same DeepSpeed engine as RL. The loss is
next-token cross-entropy on response tokens only (the prompt is context, not a target).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from services.common.config import T1Config
from services.common.logs import event
from services.common.weights import copy_tokenizer_files
from services.trainer.task import AdditionTask

log = logging.getLogger(__name__)


def build_sft_examples(task: AdditionTask, num_examples: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    # Indices from the far end of the prompt space so SFT and RL prompts do not overlap.
    base = 10**9
    return [(p.prompt, task.cot(p, rng)) for p in (task.problem(base + i) for i in range(num_examples))]


def load_sft_records(path: str | Path, tokenizer=None) -> list[tuple[str, str]]:
    """(prompt, response) pairs from a jsonl file in one of the common schemas.

    - ``{"prompt", "response"}`` or ``{"prompt", "completion"}``
    - MATH: ``{"problem", "solution"}`` (the solution carries its ``\\boxed{}`` answer)
    - GSM8K: ``{"question", "answer"}``; the final ``#### 42`` becomes ``\\boxed{42}``
    - chat: ``{"messages": [{"role", "content"}, ...]}``, the last message being the assistant's;
      the prompt uses the tokenizer's chat template when it has one, else ``role: content`` lines.
    """
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
        pairs.append(_pair(rec, tokenizer, f"{path}:{n}"))
    if not pairs:
        raise ValueError(f"{path}: no records")
    return pairs


def _pair(rec: dict, tokenizer, where: str) -> tuple[str, str]:
    if "messages" in rec:
        msgs = rec["messages"]
        if not msgs or msgs[-1].get("role") != "assistant":
            raise ValueError(f"{where}: the last message must be the assistant's")
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        else:
            prompt = "".join(f"{m['role']}: {m['content']}\n" for m in msgs[:-1]) + "assistant: "
        return prompt, msgs[-1]["content"]
    for p_key, r_key in (("prompt", "response"), ("prompt", "completion"), ("problem", "solution")):
        if p_key in rec and r_key in rec:
            return rec[p_key], rec[r_key]
    if "question" in rec and "answer" in rec:
        body, sep, final = rec["answer"].rpartition("####")
        response = f"{body.strip()} \\boxed{{{final.strip()}}}" if sep else rec["answer"]
        return rec["question"], response
    raise ValueError(f"{where}: unknown schema (keys {sorted(rec)}); expected prompt/response, "
                     "problem/solution, question/answer or messages")


def encode_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    eos = tokenizer.eos_token_id
    rows, labels = [], []
    for prompt, response in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]
        rows.append(p + r)
        labels.append([-100] * len(p) + r)
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), eos, dtype=torch.long)
    lab = torch.full((len(rows), length), -100, dtype=torch.long)
    att = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels)):
        ids[i, : len(row)] = torch.tensor(row)
        lab[i, : len(row)] = torch.tensor(label)
        att[i, : len(row)] = 1
    return {"input_ids": ids, "labels": lab, "attention_mask": att}


def run_sft(cfg: T1Config, src: Path, dst: Path, num_examples: int = 2000,
            progress: Callable[[int, float], None] | None = None,
            data: list[tuple[str, str]] | None = None) -> Path:
    """Train ``src`` for ``cfg.trainer.sft_steps`` on ``data`` (prompt, response) pairs -- by
    default ``num_examples`` synthesized traces of the configured task; save to ``dst``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.ds_engine import build_engine

    tc = cfg.trainer
    torch.set_num_threads(tc.torch_threads)
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    engine = build_engine(model, tc, tc.sft_lr)
    if data is None:
        task = AdditionTask(cfg.task.digits, cfg.task.operands, cfg.task.seed)
        data = build_sft_examples(task, num_examples, cfg.task.seed)
    rng = random.Random(cfg.task.seed)
    t0 = time.monotonic()
    for step in range(1, tc.sft_steps + 1):
        batch = encode_batch(tokenizer, rng.sample(data, min(tc.sft_batch, len(data))))
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        if progress:
            progress(step, loss.item())
        if step % 50 == 0 or step == tc.sft_steps:
            event(log, "sft step", step=step, loss=round(loss.item(), 4),
                  seconds=round(time.monotonic() - t0, 1))
    tmp = dst.with_name(dst.name + ".tmp")
    engine.module.save_pretrained(tmp, safe_serialization=True)
    copy_tokenizer_files(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst
