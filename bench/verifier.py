"""Verifier throughput: our scorer (exact fast path + sandboxed math-verify) vs math-verify alone.

Same items for both, scored one at a time in this process: T1-style responses to the addition
task (mostly plain-number answers, as in RL on numeric math) plus a share of symbolic answers
that must go through the sandbox. Prints verdict agreement and a RESULT line.
"""

from __future__ import annotations

import random
import time


def items(n: int, seed: int = 0) -> list[tuple[str, str]]:
    from services.trainer.task import AdditionTask

    rng = random.Random(seed)
    task = AdditionTask(digits=3)
    out = []
    for i in range(n):
        p = task.problem(i)
        if i % 10 == 0:  # symbolic: needs the parser
            out.append((f"so the answer is \\boxed{{\\sqrt{{{p.answer ** 2}}}}}", str(p.answer)))
            continue
        answer = p.answer if rng.random() < 0.5 else p.answer + rng.choice([-1, 1, 10])
        out.append((task.cot(p, rng).rsplit("\\boxed", 1)[0] + f"\\boxed{{{answer}}}", str(p.answer)))
    return out


def main() -> None:
    import logging

    from math_verify import parse, verify

    from services.common.config import VerifierConfig
    from services.verifier.scoring import Scorer

    logging.disable(logging.WARNING)
    data = items(2000)
    scorer = Scorer(VerifierConfig(workers=1))
    scorer.score("\\boxed{x+1}", "x+1")  # start-up of the sandbox process is not measured
    t0 = time.perf_counter()
    ours = [scorer.score(r, g).correct for r, g in data]
    ours_s = time.perf_counter() - t0
    scorer.close()

    t0 = time.perf_counter()
    peer = [bool(verify(parse(f"${g}$"), parse(r))) for r, g in data]
    peer_s = time.perf_counter() - t0

    agree = sum(a == b for a, b in zip(ours, peer)) / len(data)
    print(f"items {len(data)}; ours {len(data) / ours_s:.0f} items/s "
          f"(fast path {scorer.fast_path_hits}, sandbox {scorer.sandbox_calls}); "
          f"math-verify {len(data) / peer_s:.0f} items/s; verdict agreement {agree:.4f}")
    print(f"RESULT verifier_vs_math_verify {peer_s / ours_s:.2f} x vs math-verify")
    print(f"RESULT verifier_agreement_with_math_verify {agree:.4f} fraction vs math-verify")


if __name__ == "__main__":
    main()
