"""SFT on synthesized trial-and-error / self-verification chain-of-thought (T1 stage 1).

The dataset is fixed (``trainer.sft_examples`` traces from a seed), as in T1 where CoT data is
scarce; training runs for ``steps`` minibatches over it on the same DeepSpeed engine as RL. The loss is
next-token cross-entropy on response tokens only (the prompt is context, not a target), through
the same token layout (``packing``), response-only chunked LM head (``policy``), sharding and
gradient accumulation (``accumulate``) as RL, so its memory scales with long answers alike.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from services.common.config import T1Config
from services.common.logs import event
from services.common.tokens import prompt_token_ids
from services.common.weights import copy_tokenizer_files
from services.data.loaders import DEFAULT_FORMAT
from services.data.prompt_format import PromptFormat
from services.data.tasks import Task, make_task
from services.trainer import dist
from services.trainer.accumulate import backward_passes
from services.trainer.dist import barrier, broadcast, full_params, is_main, local_cores
from services.trainer.packing import micro_batches, pack
from services.trainer.policy import Policy
from services.trainer.step_log import StepLogger

log = logging.getLogger(__name__)


def build_sft_examples(task: Task, num_examples: int, seed: int,
                       fmt: PromptFormat = DEFAULT_FORMAT) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    # Indices from the far end of the prompt space so SFT and RL prompts do not overlap.
    base = 10**9
    return [(fmt.problem(p.text), task.cot(p, rng)) for p in (task.problem(base + i) for i in range(num_examples))]


def load_sft_records(path: str | Path, tokenizer=None, fmt: PromptFormat | None = None) -> list[tuple[str, str]]:
    """(prompt, response) pairs from a jsonl file in one of the common schemas, the problems
    formatted by ``fmt`` (the config's ``prompt`` section; default the plain ``Q:...\\nA:``) as
    RL and evaluation format them.

    - ``{"prompt", "response"}`` or ``{"prompt", "completion"}``: a prompt already (as is in the
      plain style, the user's message in the chat style)
    - MATH: ``{"problem", "solution"}`` (the solution carries its ``\\boxed{}`` answer)
    - GSM8K: ``{"question", "answer"}``; the final ``#### 42`` becomes ``\\boxed{42}``
    - chat: ``{"messages": [{"role", "content"}, ...]}``, the last message being the assistant's;
      the roles are kept: the tokenizer's chat template when it has one, else ``role: content`` lines.
    """
    fmt = fmt or PromptFormat(DEFAULT_FORMAT.cfg, tokenizer)
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
        pairs.append(_pair(rec, fmt, f"{path}:{n}"))
    if not pairs:
        raise ValueError(f"{path}: no records")
    return pairs


def _pair(rec: dict, fmt: PromptFormat, where: str) -> tuple[str, str]:
    if "messages" in rec:
        msgs = rec["messages"]
        if not msgs or msgs[-1].get("role") != "assistant":
            raise ValueError(f"{where}: the last message must be the assistant's")
        return fmt.conversation(msgs[:-1]), msgs[-1]["content"]
    for r_key in ("response", "completion"):
        if "prompt" in rec and r_key in rec:
            return fmt.verbatim(rec["prompt"]), rec[r_key]
    if "problem" in rec and "solution" in rec:
        return fmt.problem(rec["problem"]), rec["solution"]
    if "question" in rec and "answer" in rec:
        body, sep, final = rec["answer"].rpartition("####")
        response = f"{body.strip()} \\boxed{{{final.strip()}}}" if sep else rec["answer"]
        return fmt.problem(rec["question"]), response
    raise ValueError(f"{where}: unknown schema (keys {sorted(rec)}); expected prompt/response, "
                     "problem/solution, question/answer or messages")


Example = tuple[list[int], list[int]]  # prompt ids, response ids ending in EOS


def tokenize_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[Example]:
    """Token ids of (prompt, response) pairs. ``run_sft`` tokenizes its fixed dataset once:
    re-tokenizing every sampled minibatch was ~4% of a tiny-model step."""
    eos = tokenizer.eos_token_id
    return [(prompt_token_ids(tokenizer, prompt),
             tokenizer(response, add_special_tokens=False)["input_ids"] + [eos])
            for prompt, response in pairs]


def truncate_examples(examples: list[Example], max_len: int) -> tuple[list[Example], int, int]:
    """Examples cut to ``max_len`` tokens (the response's tail goes; 0: no limit). Returns the
    examples, how many were cut and how many were dropped (a prompt that leaves no room)."""
    if max_len <= 0:
        return examples, 0, 0
    out, cut, dropped = [], 0, 0
    for prompt, response in examples:
        room = max_len - len(prompt)
        if room < 1:
            dropped += 1
            continue
        if len(response) > room:
            cut += 1
            response = response[:room]
        out.append((prompt, response))
    if not out:
        raise ValueError(f"trainer.sft_max_seq_len={max_len}: every example's prompt fills it")
    return out, cut, dropped


def sft_loss_sum(engine, examples: list[Example], row_tokens: int, pad_id: int) -> torch.Tensor:
    """Negative log-likelihood of the response tokens, summed (the prompt is context, not a
    target), through the same response-only chunked head as RL."""
    batch = pack(examples, row_tokens, pad_id).to(engine.device)
    logp, _ = engine(batch.input_ids, batch.position_ids, batch.score_at, batch.targets,
                     with_entropy=False)
    return -logp.sum()


def lr_at(step: int, steps: int, base: float, tc) -> float:
    """The SFT schedule: linear warm-up over ``sft_warmup_steps``, then constant, linear or
    cosine decay to ``sft_min_lr_ratio`` x base at the last step."""
    if tc.sft_warmup_steps and step <= tc.sft_warmup_steps:
        return base * step / tc.sft_warmup_steps
    if tc.sft_schedule == "constant":
        return base
    span = max(1, steps - tc.sft_warmup_steps)
    done = min(1.0, (step - tc.sft_warmup_steps) / span)
    shape = 1.0 - done if tc.sft_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))
    return base * (tc.sft_min_lr_ratio + (1.0 - tc.sft_min_lr_ratio) * shape)


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
    base_lr = tc.sft_lr if lr is None else lr
    engine = build_engine(Policy(model, tc.logprob_chunk_tokens), tc, base_lr)
    if data is None:
        task = make_task(cfg.task)
        data = build_sft_examples(task, num_examples or tc.sft_examples, cfg.task.seed,
                                  PromptFormat(cfg.prompt, tokenizer))
    examples, cut, dropped = truncate_examples(tokenize_pairs(tokenizer, data), tc.sft_max_seq_len)
    if cut or dropped:
        event(log, "sft examples truncated", max_seq_len=tc.sft_max_seq_len, truncated=cut,
              dropped=dropped, examples=len(data))
    eos = tokenizer.eos_token_id
    rng = random.Random(cfg.task.seed)
    steps = tc.sft_steps if steps is None else steps
    step_log = StepLogger(Path(cfg.run_dir), prefix="sft") if tc.tensorboard and is_main() else None
    scale = 1.0  # lowered at each plateau, on top of the schedule

    def micro_loss(mb: list[Example]) -> tuple[torch.Tensor, float]:
        loss = sft_loss_sum(engine, mb, tc.sft_pack_tokens, eos)
        return loss, loss.item()
    t0 = time.monotonic()
    try:
        for step in range(1, steps + 1):
            rate = lr_at(step, steps, base_lr, tc) * scale
            for group in engine.optimizer.param_groups:
                group["lr"] = rate
            # every rank draws the same minibatch and trains on its share of the sequences
            picked = rng.sample(examples, min(tc.sft_batch, len(examples)))
            lengths = [len(p) + len(r) for p, r in picked]
            mine = dist.balanced_shards(lengths, dist.world_size())[dist.rank()]
            micro = [[picked[mine[j]] for j in mb]
                     for mb in micro_batches([lengths[i] for i in mine], tc.sft_micro_batch_tokens,
                                             tc.sft_pack_tokens)]
            total = sum(len(r) for _, r in picked)
            parts, passes = backward_passes(engine, micro, micro_loss, total)
            engine.step()
            loss = dist.all_reduce(torch.tensor(sum(parts), dtype=torch.float64)).item() / max(total, 1)
            if progress:
                progress(step, loss)
            if step_log is not None:
                grad_norm = engine.get_global_grad_norm()
                step_log.log({"step": step, "loss": loss, "lr": rate, "tokens": total,
                              "micro_batches": passes,
                              "grad_norm": float(grad_norm) if grad_norm is not None else None,
                              "seconds": time.monotonic() - t0})
            if step % 50 == 0 or step == steps:
                event(log, "sft step", step=step, loss=round(loss, 4), lr=rate,
                      seconds=round(time.monotonic() - t0, 1))
            if plateau is not None and step % plateau.every == 0:
                with full_params(engine):
                    done = plateau.reached(step, engine.module.lm) if is_main() else None
                if broadcast(done):  # every rank decides alike
                    if len(plateau.restarts) < plateau.lr_decays:
                        plateau.restart(step)
                        scale *= plateau.lr_factor
                        event(log, "sft plateau: lower lr", step=step, lr=lr_at(step, steps, base_lr, tc) * scale)
                        continue
                    event(log, "sft plateau", step=step, history=plateau.history)
                    break
    finally:
        if step_log is not None:
            step_log.close()
    with full_params(engine):  # ZeRO-3 keeps only partitions in the module
        if is_main():
            tmp = dst.with_name(dst.name + ".tmp")
            engine.module.lm.save_pretrained(tmp, safe_serialization=True)
            copy_tokenizer_files(src, tmp)
            if dst.exists():
                shutil.rmtree(dst)
            tmp.rename(dst)
    barrier()
    return dst
