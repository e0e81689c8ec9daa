"""Turn one response into a verdict: extract, screen, decide equivalence, apply penalties.

Reward rule (T1): 1 for a correct final answer, 0 for a wrong or missing one, and
``penalty_reward`` (default -1) when the response is truncated, repetitive or garbled, whatever
it says; for ``python`` tasks the base reward is the fraction of tests passed. A check that timed
out or crashed is reported as such (``status``), never silently as a wrong answer.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from services.common.config import VerifierConfig
from services.common.schemas import Verdict
from services.common.verify_api import VerifyOptions
from services.verifier.code_sandbox import CodeSandbox, extract_code
from services.verifier.equivalence import fast_equivalent
from services.verifier.extract import extract_answer, extract_choice
from services.verifier.penalties import garbled_share, is_repetitive
from services.verifier.round_robin import RoundRobinPool
from services.verifier.sandbox import SandboxPool
from services.verifier.screening import expensive_looking, screen_answer

_DEFAULT_OPTIONS = VerifyOptions()


class Scorer:
    def __init__(self, cfg: VerifierConfig, pool: SandboxPool | None = None) -> None:
        self.cfg = cfg
        self.pool = pool or SandboxPool(cfg.workers, cfg.timeout_s, cfg.memory_mb)
        # Answers that look expensive (sums, factorials, towers, ...) and python checks run in a
        # lane of their own, so a slow check never holds up an ordinary answer's.
        self.slow_pool = (SandboxPool(cfg.slow_lane_workers, cfg.timeout_s, cfg.memory_mb)
                          if cfg.slow_lane_workers else None)
        # each lane serves its callers' batches in turn: no request can starve another's
        self._slow_threads = RoundRobinPool(max(1, cfg.slow_lane_workers), "score-slow")
        self.code = CodeSandbox(cfg.code_timeout_s, cfg.code_memory_mb, cfg.code_isolation,
                                cfg.code_python)
        self.scripts = tuple(cfg.allowed_scripts)
        self._threads = RoundRobinPool(max(1, self.pool.size), "score")
        self.fast_path_hits = 0
        self.sandbox_calls = 0
        self.cache_hits = 0
        # Sandboxed verdicts by (answer, gold): the K samples of one prompt often agree, and a
        # parse costs milliseconds. Only definite verdicts are cached, never timeouts/errors.
        self._cache: OrderedDict[tuple[str, str], tuple[float, str | None]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_size = 8192

    def score_batch(self, items: list[tuple[str, str, str, VerifyOptions]]) -> list[Verdict]:
        """Score many items, input order. Whatever needs no sandbox (the fast path, a screened or
        missing answer, a cached verdict, a choice letter) is answered here at once, so cheap
        items never wait behind a slow check; the rest run up to one per sandbox worker."""
        quick = [self.score(*item, sandbox=False) for item in items]
        pending = [i for i, v in enumerate(quick) if v is None]
        if len(pending) == 1:
            quick[pending[0]] = self.score(*items[pending[0]])
            return quick
        in_slow_lane = {i: self._slow_lane(*items[i]) for i in pending}
        main = [i for i in pending if not in_slow_lane[i]]
        slow = [i for i in pending if in_slow_lane[i]]
        futures = [*zip(main, self._threads.submit_batch(self.score, [items[i] for i in main])),
                   *zip(slow, self._slow_threads.submit_batch(self.score, [items[i] for i in slow]))]
        for i, f in futures:
            quick[i] = f.result()
        return quick

    def _slow_lane(self, response: str, gold: str, task: str, options: VerifyOptions) -> bool:
        if task == "python":
            return True
        extracted = extract_answer(response, options.extraction)
        return extracted is not None and self._lane(extracted, gold) is self.slow_pool

    def _lane(self, extracted: str, gold: str) -> SandboxPool:
        """The sandbox pool that parses the pair: the slow lane's when either side looks
        expensive (an outside caller's gold is as hostile as its answer)."""
        costly = expensive_looking(extracted) or expensive_looking(gold)
        return self.slow_pool if self.slow_pool is not None and costly else self.pool

    def penalties(self, response: str, finish_reason: str) -> dict[str, float]:
        c = self.cfg
        return {
            "truncated": float(c.penalize_truncated and finish_reason == "length"),
            "repetitive": float(c.penalize_repetitive and is_repetitive(
                response, c.repetition_ngram, c.repetition_max_share, c.repetition_min_words)),
            "garbled": float(c.penalize_garbled
                             and garbled_share(response, self.scripts) > c.garbled_max_share),
        }

    def score(self, response: str, gold: str, task: str = "math",
              options: VerifyOptions = _DEFAULT_OPTIONS, sandbox: bool = True) -> Verdict | None:
        """The verdict; with ``sandbox=False``, None where it would need a sandbox."""
        t0 = time.perf_counter()
        truncated = options.finish_reason == "length"
        if task == "python" and not sandbox:
            return None
        math_verdict = None
        if task == "math" and not truncated:
            math_verdict = self._math(response, gold, options.extraction, sandbox)
            if math_verdict is None:
                return None
        penalties = self.penalties(response, options.finish_reason)
        if task == "python":
            status, base, extracted, detail = self._python(response, options)
        elif truncated:  # an unfinished response has no final answer, even if it shows a box
            status, base, extracted, detail = "ok", 0.0, None, "truncated"
        elif task == "multiple_choice":
            extracted = extract_choice(response, options.choices, options.extraction)
            status, base, detail = "ok", float(extracted is not None and extracted == gold.strip().upper()), None
        else:
            status, base, extracted, detail = math_verdict
        correct = status == "ok" and base == 1.0 and not truncated
        penalized = any(penalties.values())
        reward = self.cfg.penalty_reward if penalized else (base if status == "ok" else 0.0)
        components = {"correct": float(correct), "base": base, **penalties}
        return Verdict(correct=correct and not penalized, reward=reward, extracted=extracted,
                       status=status, components=components, detail=detail,
                       latency_ms=(time.perf_counter() - t0) * 1000)

    def _math(self, response: str, gold: str, extraction: str, sandbox: bool = True):
        """(status, base reward, extracted, detail); None when it needs the sandbox and
        ``sandbox`` is off."""
        extracted = extract_answer(response, extraction)
        if extracted is None:
            return "ok", 0.0, None, "no final answer found"
        rejected = screen_answer(extracted, self.cfg.max_answer_chars, self.cfg.max_nesting)
        if rejected:
            return "ok", 0.0, extracted[:200], f"answer rejected before parsing: {rejected}"
        fast = fast_equivalent(extracted, gold)
        if fast is not None:
            self.fast_path_hits += 1
            return "ok", float(fast), extracted, None
        key = (extracted, gold)
        with self._cache_lock:
            if (hit := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return "ok", hit[0], extracted, hit[1]
        if not sandbox:
            return None
        # an outside caller's gold is as hostile as its answer: screened before a parser sees it
        if rejected := screen_answer(gold, self.cfg.max_answer_chars, self.cfg.max_nesting):
            return "error", 0.0, extracted[:200], f"gold rejected before parsing: {rejected}"
        self.sandbox_calls += 1
        res = self._lane(extracted, gold).run("sympy_equivalent", extracted, gold)
        if res.status == "ok":
            verdict = (float(bool(res.value)), None)
        elif res.status == "error" and not (res.error or "").startswith("sandbox worker died"):
            # The parser raised: an unparseable answer is a wrong answer, not a service error.
            verdict = (0.0, f"unparseable: {res.error}")
        else:
            return res.status, 0.0, extracted, res.error
        with self._cache_lock:
            self._cache[key] = verdict
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return "ok", verdict[0], extracted, verdict[1]

    def _python(self, response: str, options: VerifyOptions):
        result = self.code.run(extract_code(response), options.tests)
        return result.status, result.fraction, f"{result.passed}/{result.total} tests", result.detail

    def close(self) -> None:
        self._threads.shutdown()
        self._slow_threads.shutdown()
        self.pool.close()
        if self.slow_pool is not None:
            self.slow_pool.close()
