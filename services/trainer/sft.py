"""SFT on synthesized trial-and-error / self-verification chain-of-thought (T1 stage 1).

The dataset is fixed (``trainer.sft_examples`` traces from a seed), as in T1 where CoT data is
scarce; training runs for ``steps`` minibatches over it on the same DeepSpeed engine as RL. The loss is
next-token cross-entropy on response tokens only (the prompt is context, not a target).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from services.common.config import T1Config
from services.common.logs import event
from services.common.weights import copy_tokenizer_files
from services.trainer.dist import barrier, broadcast, full_params, is_main, local_cores
from services.trainer.task import Task, make_task

log = logging.getLogger(__name__)


def build_sft_examples(task: Task, num_examples: int, seed: int) -> list[tuple[str, str]]:
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


Example = tuple[list[int], list[int]]  # prompt ids, response ids ending in EOS


def tokenize_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[Example]:
    """Token ids of (prompt, response) pairs. ``run_sft`` tokenizes its fixed dataset once:
    re-tokenizing every sampled minibatch was ~4% of a tiny-model step."""
    eos = tokenizer.eos_token_id
    return [(tokenizer(prompt, add_special_tokens=False)["input_ids"],
             tokenizer(response, add_special_tokens=False)["input_ids"] + [eos])
            for prompt, response in pairs]


def encode_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    return pad_examples(tokenize_pairs(tokenizer, pairs), tokenizer.eos_token_id)


def encode_packed(tokenizer, pairs: list[tuple[str, str]], row_tokens: int) -> dict[str, torch.Tensor]:
    return pack_examples(tokenize_pairs(tokenizer, pairs), tokenizer.eos_token_id, row_tokens)


def pad_examples(examples: list[Example], eos: int) -> dict[str, torch.Tensor]:
    """One example per row, right-padded; loss on response tokens only."""
    rows = [p + r for p, r in examples]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), eos, dtype=torch.long)
    lab = torch.full((len(rows), length), -100, dtype=torch.long)
    att = torch.zeros((len(rows), length), dtype=torch.long)
    for i, ((p, r), row) in enumerate(zip(examples, rows)):
        ids[i, : len(row)] = torch.tensor(row)
        lab[i, len(p): len(row)] = torch.tensor(r)
        att[i, : len(row)] = 1
    return {"input_ids": ids, "labels": lab, "attention_mask": att}


def pack_examples(examples: list[Example], eos: int, row_tokens: int) -> dict[str, torch.Tensor]:
    """Several examples per row, up to ``row_tokens`` tokens (an example longer than that gets
    a row of its own): no padding wasted on short examples.

    ``position_ids`` restart at 0 for every example and no attention mask is passed: from that
    transformers builds a block-diagonal causal mask, so attention never crosses examples. Each
    example's first label is -100: it would be predicted from the previous example's last token.
    """
    lengths = [len(p) + len(r) for p, r in examples]
    rows: list[list[int]] = []  # example indices per row, first fit in order
    fill: list[int] = []
    for i, n in enumerate(lengths):
        for r, used in enumerate(fill):
            if used + n <= row_tokens:
                rows[r].append(i)
                fill[r] += n
                break
        else:
            rows.append([i])
            fill.append(n)
    width = max(fill)
    ids = torch.full((len(rows), width), eos, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            prompt, response = examples[i]
            n = lengths[i]
            ids[r, at:at + n] = torch.tensor(prompt + response)
            lab[r, at + len(prompt):at + n] = torch.tensor(response)
            lab[r, at] = -100
            pos[r, at:at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)  # the padding tail: a segment of its own
    return {"input_ids": ids, "labels": lab, "position_ids": pos}


@dataclass
class Plateau:
    """Detect the plateau of held-out accuracy: every ``every`` steps ``evaluate`` scores the
    model; the plateau is reached when the last ``patience`` scores (all taken since the last
    ``restart``) add no more than ``min_delta`` to the best before them. ``run_sft`` then lowers
    the learning rate and restarts the watch, ``lr_decays`` times, before it stops: with a
    constant rate the weights keep moving around the optimum and more training still pays
    (T1 trains SFT to convergence before RL). No plateau is called before ``min_steps``: while
    the format is being learnt, accuracy sits near zero and its noise looks like a plateau."""

    evaluate: Callable[[torch.nn.Module], float]
    every: int = 50
    patience: int = 3
    min_delta: float = 0.01
    lr_decays: int = 0
    lr_factor: float = 0.25
    min_steps: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)
    restarts: list[int] = field(default_factory=list)  # steps at which the rate was lowered
    seconds: float = 0.0  # spent evaluating (not training)

    def reached(self, step: int, model: torch.nn.Module) -> bool:
        was_training = model.training
        model.eval()
        t0 = time.monotonic()
        with torch.no_grad():
            self.history.append((step, self.evaluate(model)))
        self.seconds += time.monotonic() - t0
        model.train(was_training)
        scores = [s for _, s in self.history]
        since = sum(1 for s, _ in self.history if s <= self.restarts[-1]) if self.restarts else 0
        if step < self.min_steps or len(scores) - since < self.patience or len(scores) <= self.patience:
            return False
        return max(scores[-self.patience:]) <= max(scores[:-self.patience]) + self.min_delta

    def restart(self, step: int) -> None:
        self.restarts.append(step)


def run_sft(cfg: T1Config, src: Path, dst: Path, num_examples: int | None = None,
            progress: Callable[[int, float], None] | None = None,
            data: list[tuple[str, str]] | None = None, plateau: Plateau | None = None,
            steps: int | None = None, lr: float | None = None) -> Path:
    """Train ``src`` for ``steps`` (default ``cfg.trainer.sft_steps``) on ``data`` (prompt,
    response) pairs -- by default ``num_examples`` (``trainer.sft_examples``) synthesized traces
    of the configured task -- or until ``plateau`` is reached (after its learning-rate decays),
    whichever comes first; save to ``dst``. ``lr`` defaults to ``trainer.sft_lr``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.ds_engine import build_engine

    tc = cfg.trainer
    torch.set_num_threads(tc.sft_torch_threads or local_cores())
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    engine = build_engine(model, tc, tc.sft_lr if lr is None else lr)
    if data is None:
        task = make_task(cfg.task)
        data = build_sft_examples(task, num_examples or tc.sft_examples, cfg.task.seed)
    examples = tokenize_pairs(tokenizer, data)
    eos = tokenizer.eos_token_id
    rng = random.Random(cfg.task.seed)
    t0 = time.monotonic()
    steps = tc.sft_steps if steps is None else steps
    for step in range(1, steps + 1):
        picked = rng.sample(examples, min(tc.sft_batch, len(examples)))
        if tc.sft_pack_tokens:
            batch = pack_examples(picked, eos, tc.sft_pack_tokens)
            loss = engine(**batch, use_cache=False).loss  # a cache would disable the packed mask
        else:
            loss = engine(**pad_examples(picked, eos)).loss
        engine.backward(loss)
        engine.step()
        if progress:
            progress(step, loss.item())
        if step % 50 == 0 or step == steps:
            event(log, "sft step", step=step, loss=round(loss.item(), 4),
                  seconds=round(time.monotonic() - t0, 1))
        if plateau is not None and step % plateau.every == 0:
            with full_params(engine):
                done = plateau.reached(step, engine.module) if is_main() else None
            if broadcast(done):  # every rank decides alike
                if len(plateau.restarts) < plateau.lr_decays:
                    plateau.restart(step)
                    for group in engine.optimizer.param_groups:
                        group["lr"] *= plateau.lr_factor
                    event(log, "sft plateau: lower lr", step=step, lr=engine.optimizer.param_groups[0]["lr"])
                    continue
                event(log, "sft plateau", step=step, history=plateau.history)
                break
    with full_params(engine):  # ZeRO-3 keeps only partitions in the module
        if is_main():
            tmp = dst.with_name(dst.name + ".tmp")
            engine.module.save_pretrained(tmp, safe_serialization=True)
            copy_tokenizer_files(src, tmp)
            if dst.exists():
                shutil.rmtree(dst)
            tmp.rename(dst)
    barrier()
    return dst
