"""T1-style trial-and-error CoT synthesis from OpenAI-compatible ``/v1/completions`` endpoints.

Prompts are sent as the text the prompt format makes (a chat template rendered here, from the
endpoint model's tokenizer), so an attempt and its critique continue the very prompt RL sends.

Per problem: ``attempts`` samples (endpoints taken round-robin), each scored against the gold
answer by the verifier; a problem with no verified-correct attempt is dropped. The kept ones get
a critique ("Let me verify the answer by ...") of each attempt that goes into the trace, and one
trace is written: up to ``max_wrong`` wrong attempts, each with its critique and a note that the
check failed, then the correct attempt with its critique, ending in ``\\boxed{answer}``.

The rewrite is a template (concatenation with connective text) by default: a small model, the
tiny default above all, cannot rewrite several attempts into one coherent solution, and a
template cannot lose the verified answer. ``rewrite="llm"`` asks the model to rewrite instead and
falls back to the template when the rewrite does not verify. Every written trace is verified as a
whole (penalties included), so each record ends in an answer the verifier accepts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import httpx
import openai

from services.common.config import VerifierConfig
from services.common.logs import event
from services.common.verifier_client import AsyncVerifierClient
from services.common.verify_api import VerifyItem, VerifyOptions
from services.data.loaders import MathProblem
from services.data.prompt_format import PromptFormat
from services.verifier.extract import last_boxed

log = logging.getLogger(__name__)

CRITIQUE_CUE = "Let me verify the answer by"
FAILED = "That check fails: {answer} is not right. Let me try again."
PASSED = "The check passes, so the answer is \\boxed{{{answer}}}"
REWRITE_PROMPT = (
    "Below are attempts at a problem, each followed by a check. Rewrite them as one solution "
    "that makes the first attempt, checks it, notices the error, corrects it, checks again, and "
    "ends with the final answer in \\boxed{{}}.\n\n{prompt}\n{attempts}\n\nRewritten solution:\n")
RETRY_STATUS = {429, 500, 502, 503, 504}
_BOX = re.compile(r"\\(?:boxed|fbox)\{")


class EndpointError(RuntimeError):
    """An endpoint that cannot be used: unreachable, not serving the model, or refusing requests."""


@dataclass(frozen=True)
class SynthesisConfig:
    attempts: int = 4
    model: str | None = None  # name in the OpenAI API; default: what the first endpoint serves
    max_tokens: int = 256  # per attempt
    critique_tokens: int = 128
    temperature: float = 0.8
    max_wrong: int = 1  # wrong attempts shown before the correct one
    rewrite: Literal["template", "llm"] = "template"
    concurrency: int = 16  # completion requests in flight (as attempts x problems)
    timeout_s: float = 120.0
    retries: int = 3
    seed: int = 0  # per-request seeds derive from it: a rerun samples the same attempts
    # where an attempt ends besides EOS: the plain format's next question (a chat template's
    # end-of-turn token is the model's EOS)
    stop: tuple[str, ...] = ("\nQ:",)


@dataclass
class SynthesisStats:
    problems: int = 0
    kept: int = 0
    attempts: int = 0
    correct_attempts: int = 0
    no_correct_attempt: int = 0  # dropped: nothing to build a trace from
    trace_rejected: int = 0  # dropped: the assembled trace failed verification (e.g. garbled)
    llm_rewrites: int = 0  # kept traces written by the model rather than the template
    seconds: float = 0.0


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str


class Verifier(Protocol):
    async def verify(self, items: list[VerifyItem]) -> list: ...  # results with .correct, .extracted

    async def aclose(self) -> None: ...


class LocalVerifier:
    """The verifier's scorer in this process (sandbox workers included), for runs without a URL."""

    def __init__(self, cfg: VerifierConfig) -> None:
        from services.verifier.scoring import Scorer

        self.scorer = Scorer(cfg)

    async def verify(self, items: list[VerifyItem]) -> list:
        batch = [(x.response, x.gold, x.task, x.options) for x in items]
        return await asyncio.to_thread(self.scorer.score_batch, batch)

    async def aclose(self) -> None:
        self.scorer.close()


def unbox(text: str) -> str:
    """``text`` with every ``\\boxed{X}``/``\\fbox{X}`` replaced by ``X``: a wrong attempt keeps
    its answer but not the box, so the trace's only box is the final one the verifier reads."""
    out, i = [], 0
    while m := _BOX.search(text, i):
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        out += [text[i:m.start()], unbox(text[m.end():j - 1 if depth == 0 else j])]
        i = j
    return "".join(out + [text[i:]])


def template_trace(wrong: list[tuple[str, str, str | None]], correct: tuple[str, str], answer: str) -> str:
    """One trace from (attempt, critique, extracted answer) of the wrong attempts and
    (attempt, critique) of the correct one; ``answer`` is the correct attempt's verified answer."""
    parts = []
    for attempt, critique, extracted in wrong:
        parts += [unbox(attempt).strip(), f"{CRITIQUE_CUE} {unbox(critique).strip()}",
                  FAILED.format(answer=unbox(extracted or "").strip() or "this answer")]
    parts += [unbox(correct[0]).strip(), f"{CRITIQUE_CUE} {unbox(correct[1]).strip()}",
              PASSED.format(answer=answer)]
    return "\n".join(parts)


def end_at_last_box(text: str) -> str:
    """A model's rewrite cut right after its last box (it may ramble on past its answer), with
    any earlier box unboxed; unchanged when it has no complete box (it then fails verification)."""
    boxed = last_boxed(text)
    if boxed is None:
        return text
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    return f"{unbox(text[:start])}\\boxed{{{boxed}}}"


def _base_url(endpoint: str) -> str:
    url = endpoint.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


class Completions:
    """Completions over several OpenAI-compatible endpoints through the ``openai`` client, one
    per endpoint, round-robin; a failed request is retried with backoff on the next endpoint, so
    one endpoint going away costs retries, not the run (the clients' own retries are off: they
    would retry the same endpoint)."""

    def __init__(self, endpoints: Iterable[str], cfg: SynthesisConfig) -> None:
        self.endpoints = [_base_url(e) for e in endpoints]
        if not self.endpoints:
            raise EndpointError("no endpoint given")
        self.cfg = cfg
        self.model = cfg.model
        timeout = httpx.Timeout(cfg.timeout_s, connect=5.0)
        # a local server needs no key, but the client insists on one: OPENAI_API_KEY, else a stand-in
        key = os.environ.get("OPENAI_API_KEY") or "none"
        self.clients = [openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, timeout=timeout, max_retries=0)
                        for url in self.endpoints]
        self._turn = itertools.count()
        self.gate = asyncio.Semaphore(cfg.concurrency)

    async def check(self) -> None:
        """Every endpoint answers and serves the model (picked from the first when not given)."""
        for url, client in zip(self.endpoints, self.clients):
            try:
                served = [m.id async for m in client.models.list()]
            except openai.OpenAIError as exc:
                raise EndpointError(f"endpoint {url} unreachable or not OpenAI-compatible: {exc}") from None
            self.model = self.model or (served[0] if served else None)
            if self.model not in served:
                raise EndpointError(f"endpoint {url} does not serve model {self.model!r} (serves: {served})")

    async def complete(self, prompt: str, max_tokens: int, seed: int) -> Completion:
        start = next(self._turn)
        async with self.gate:
            for attempt in range(self.cfg.retries + 1):
                turn = (start + attempt) % len(self.endpoints)
                url = self.endpoints[turn]
                try:
                    resp = await self.clients[turn].completions.create(
                        model=self.model, prompt=prompt, max_tokens=max_tokens,
                        temperature=self.cfg.temperature, seed=seed, stop=list(self.cfg.stop) or None)
                except openai.APIStatusError as exc:
                    failure = f"{url} answered {exc.status_code}: {str(exc.message)[:300]}"
                    if exc.status_code not in RETRY_STATUS:
                        raise EndpointError(failure) from None
                except openai.APIConnectionError as exc:  # refused, reset, timed out
                    failure = f"{url}: {exc.__cause__ or exc!r}"
                else:
                    choice = resp.choices[0]
                    return Completion(choice.text, choice.finish_reason or "stop")
                if attempt < self.cfg.retries:
                    await asyncio.sleep(min(8.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2))
        raise EndpointError(f"gave up after {self.cfg.retries + 1} tries: {failure}")

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()


def _item(response: str, gold: str, finish_reason: str = "stop") -> VerifyItem:
    return VerifyItem(response=response, gold=gold,
                      options=VerifyOptions(finish_reason="length" if finish_reason == "length" else "stop"))


def sft_record(p: MathProblem, response: str, fmt: PromptFormat | None) -> dict:
    """A trace as SFT data in the prompt format it was sampled in: prompt/response in the plain
    style, the chat messages (system, user, the trace as the assistant's reply) in the chat
    style, so that SFT applies the same template and trains on the prompt RL will send."""
    if fmt is not None and fmt.cfg.style == "chat":
        return {"messages": [*fmt.messages(p.problem, p.verbatim), {"role": "assistant", "content": response}]}
    return {"prompt": p.prompt, "response": response}


@dataclass
class Synthesizer:
    llm: Completions
    verifier: Verifier
    cfg: SynthesisConfig
    fmt: PromptFormat | None = None  # how the problems were formatted (None: the plain default)
    stats: SynthesisStats = field(default_factory=SynthesisStats)

    def _seed(self, problem: MathProblem, stage: int, k: int) -> int:
        return zlib.crc32(f"{self.cfg.seed}:{problem.source}:{problem.index}:{stage}:{k}".encode()) >> 1

    async def problem(self, p: MathProblem) -> dict | None:
        """The record for ``p``, or None when it is dropped."""
        c = self.cfg
        attempts = await asyncio.gather(*(self.llm.complete(p.prompt, c.max_tokens, self._seed(p, 0, k))
                                          for k in range(c.attempts)))
        verdicts = await self.verifier.verify([_item(a.text, p.gold, a.finish_reason) for a in attempts])
        right = [k for k, v in enumerate(verdicts) if v.correct]
        self.stats.attempts += len(attempts)
        self.stats.correct_attempts += len(right)
        if not right:  # critiques only for attempts that make it into a trace: the rest is waste
            self.stats.no_correct_attempt += 1
            return None
        wrong = [k for k, v in enumerate(verdicts) if not v.correct][:c.max_wrong]
        shown = wrong + right[:1]
        critiques = await asyncio.gather(*(
            self.llm.complete(f"{p.prompt}{attempts[k].text}\n{CRITIQUE_CUE}", c.critique_tokens,
                              self._seed(p, 1, k)) for k in shown))
        crit = {k: x.text for k, x in zip(shown, critiques)}
        trace = template_trace([(attempts[k].text, crit[k], verdicts[k].extracted) for k in wrong],
                               (attempts[right[0]].text, crit[right[0]]), verdicts[right[0]].extracted)
        candidates = [trace]
        if c.rewrite == "llm":
            steps = "\n\n".join(f"Attempt {i + 1}:{attempts[k].text}\n{CRITIQUE_CUE}{crit[k]}"
                                for i, k in enumerate(shown))
            try:
                rewritten = await self.llm.complete(REWRITE_PROMPT.format(prompt=p.prompt, attempts=steps),
                                                    c.max_tokens * len(shown), self._seed(p, 2, 0))
                candidates.insert(0, end_at_last_box(rewritten.text.strip()))
            except EndpointError as exc:  # e.g. the rewrite prompt does not fit the context
                event(log, "llm rewrite failed; using the template", index=p.index, error=str(exc))
        final = await self.verifier.verify([_item(t, p.gold) for t in candidates])
        chosen = next((i for i, v in enumerate(final) if v.correct), None)
        if chosen is None:
            self.stats.trace_rejected += 1
            return None
        self.stats.llm_rewrites += int(len(candidates) == 2 and chosen == 0)
        self.stats.kept += 1
        return {**sft_record(p, candidates[chosen], self.fmt), "source": p.source,
                "attempts": len(attempts), "correct_attempts": len(right)}


async def _check_verifier(url: str) -> None:
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            (await http.get(f"{url.rstrip('/')}/health")).raise_for_status()
    except httpx.HTTPError as exc:
        raise EndpointError(f"verifier {url} unreachable or unhealthy: {exc}") from None


async def synthesize(problems: list[MathProblem], endpoints: list[str], out: str | Path,
                     cfg: SynthesisConfig = SynthesisConfig(), verifier_url: str | None = None,
                     verifier_token: str | None = None, verifier_cfg: VerifierConfig | None = None,
                     on_problem: Callable[[dict | None], None] | None = None,
                     fmt: PromptFormat | None = None) -> SynthesisStats:
    """Write one jsonl record per kept problem to ``out`` (as problems finish); the verifier is
    the REST service at ``verifier_url``, else the scorer in this process. ``on_problem(record or
    None)`` is called after each problem (progress display). ``fmt``: the format ``problems``
    were loaded with, which decides the records' shape (``sft_record``)."""
    t0 = time.monotonic()
    llm = Completions(endpoints, cfg)
    verifier = (AsyncVerifierClient(verifier_url, token=verifier_token) if verifier_url
                else LocalVerifier(verifier_cfg or VerifierConfig()))
    synth = Synthesizer(llm, verifier, cfg, fmt)
    todo = iter(problems)
    try:
        await llm.check()
        if verifier_url:
            await _check_verifier(verifier_url)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            async def work() -> None:
                for p in todo:  # shared iterator: each problem goes to one worker
                    record = await synth.problem(p)
                    synth.stats.problems += 1
                    if record is not None:
                        f.write(json.dumps(record) + "\n")
                        f.flush()
                    if on_problem:
                        on_problem(record)

            await asyncio.gather(*(work() for _ in range(max(1, cfg.concurrency // cfg.attempts))))
    finally:
        await llm.aclose()
        await verifier.aclose()
    synth.stats.seconds = round(time.monotonic() - t0, 1)
    event(log, "synthesis done", **vars(synth.stats))
    return synth.stats
