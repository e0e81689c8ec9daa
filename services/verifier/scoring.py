"""Turn one response into a verdict: extract, decide equivalence, apply penalties.

Reward rule (T1): 1 for a correct final answer, 0 for a wrong or missing one, and
``truncated_reward`` (default -1) when the response hit the length limit, whatever it says.
A check that timed out or crashed is reported as such (status), never silently as wrong.
"""

from __future__ import annotations

import time

from services.common.config import VerifierConfig
from services.common.schemas import Verdict
from services.verifier.equivalence import fast_equivalent
from services.verifier.extract import last_boxed
from services.verifier.sandbox import SandboxPool


class Scorer:
    def __init__(self, cfg: VerifierConfig, pool: SandboxPool | None = None) -> None:
        self.cfg = cfg
        self.pool = pool or SandboxPool(cfg.workers, cfg.timeout_s, cfg.memory_mb)
        self.fast_path_hits = 0
        self.sandbox_calls = 0

    def score(self, response: str, gold: str, finish_reason: str = "stop") -> Verdict:
        t0 = time.perf_counter()
        truncated = finish_reason == "length"
        extracted = None if truncated else last_boxed(response)
        status, correct, error = "ok", False, None
        if extracted is not None:
            if len(extracted) > self.cfg.max_answer_chars:
                status, error = "error", "answer too long"
            else:
                fast = fast_equivalent(extracted, gold)
                if fast is not None:
                    self.fast_path_hits += 1
                    correct = fast
                else:
                    self.sandbox_calls += 1
                    res = self.pool.run("sympy_equivalent", extracted, gold)
                    status, correct, error = res.status, bool(res.value), res.error
                    if status == "error" and error and not error.startswith("sandbox worker died"):
                        # A parse error is a verdict about the answer (unparseable = wrong).
                        status = "ok"
        reward = self.cfg.truncated_reward if truncated else float(correct)
        components = {"correct": float(correct), "truncated": float(truncated)}
        return Verdict(correct=correct, reward=reward, extracted=extracted, status=status,
                       components=components, latency_ms=(time.perf_counter() - t0) * 1000)

    def close(self) -> None:
        self.pool.close()
