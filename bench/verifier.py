"""Verifier speed: our scorer vs math-verify alone, and the REST service under concurrent load.

1. Core: the same items scored one at a time in this process by (a) our scorer (exact fast path,
   else math-verify inside a sandbox process) and (b) math-verify's ``verify(parse(gold),
   parse(pred))``. The mix is MATH-like: mostly numeric answers (integers, decimals, fractions),
   some expressions, sets, intervals and radicals; about half of the answers are wrong.
2. HTTP: ``t1 verifier`` as its own process on loopback, hit by an async client with several
   requests in flight; items/s and per-request p50/p99 latency.
3. Hostile mix: CALLERS callers, first all benign, then with HOSTILE_CALLERS of them sending
   answers that cost a parser its whole timeout in every batch: the benign callers' p99 in both.
4. Accuracy: agreement with the labelled sets in bench/data (one written with the grading rules,
   one written apart from the code), ours (lenient extraction) against math-verify's defaults
   on the same pairs.
5. Hostile text: responses of 190k characters shaped against the extractor's scans, and answers
   and golds of 2000 shaped against the fast path's, each timed against one regex pass over the
   same text (a quadratic scan shows as a ratio in the thousands).
6. Python task: the same checks (small programs, 4 tests each, a third of them wrong) under
   bubblewrap and as a bare limited process (the ``process`` backend), one at a time, in one run:
   what the namespaces cost per check.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import sys
import time

N_ITEMS = 2000
HTTP_REQUESTS = 200
HTTP_BATCH = 16
HTTP_CONCURRENCY = 8


def items(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.random()
        right = rng.random() < 0.5
        a, b = rng.randint(2, 999), rng.randint(2, 99)
        if kind < 0.45:  # integers
            gold, pred = str(a), str(a if right else a + rng.choice([-1, 1, 10]))
        elif kind < 0.60:  # decimals
            gold, pred = f"{a / 4}", f"{a / 4 if right else a / 4 + 0.5}"
        elif kind < 0.75:  # fractions, either notation
            gold, pred = f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}" if right else f"{a + 1}/{b}"
        elif kind < 0.82:  # expressions
            gold, pred = f"{b}x+{a}", f"{a}+{b}x" if right else f"{a}x+{b}"
        elif kind < 0.89:  # sets
            gold, pred = f"\\{{{a},{b}\\}}", f"\\{{{b},{a}\\}}" if right else f"\\{{{a},{b + 1}\\}}"
        elif kind < 0.95:  # intervals
            gold, pred = f"[{b},{a})", f"[{b},{a})" if right else f"({b},{a}]"
        else:  # radicals
            gold, pred = f"{b}\\sqrt{{2}}", f"\\sqrt{{{2 * b * b}}}" if right else f"\\sqrt{{{2 * b * b + 1}}}"
        out.append((f"Let me work it out step by step... so the answer is \\boxed{{{pred}}}", gold))
    return out


def core(data, workers: int) -> tuple[float, float, float, tuple[int, int]]:
    import logging

    from math_verify import parse, verify

    from services.common.config import VerifierConfig
    from services.common.verify_api import VerifyOptions
    from services.verifier.scoring import Scorer

    logging.disable(logging.WARNING)
    scorer = Scorer(VerifierConfig(workers=workers))
    # sandbox start-up is not part of the measurement
    scorer.score_batch([("\\boxed{x+1}", "x+1", "math", VerifyOptions())] * workers)
    scorer.fast_path_hits = scorer.sandbox_calls = 0
    t0 = time.perf_counter()
    # the service's own path: a request's (or a group's) items share the sandbox workers
    ours = []
    for i in range(0, len(data), 64):
        ours += [v.correct for v in scorer.score_batch(
            [(r, g, "math", VerifyOptions()) for r, g in data[i:i + 64]])]
    ours_s = time.perf_counter() - t0
    counts = (scorer.fast_path_hits, scorer.sandbox_calls)
    scorer.close()
    t0 = time.perf_counter()
    peer = [bool(verify(parse(f"${g}$"), parse(r))) for r, g in data]
    peer_s = time.perf_counter() - t0
    agree = sum(a == b for a, b in zip(ours, peer)) / len(data)
    return ours_s, peer_s, agree, counts


async def http_load(url: str, data) -> tuple[float, list[float], int]:
    import httpx

    latencies, errors = [], 0
    gate = asyncio.Semaphore(HTTP_CONCURRENCY)
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(i: int) -> None:
            nonlocal errors
            batch = [data[(i * HTTP_BATCH + j) % len(data)] for j in range(HTTP_BATCH)]
            body = {"items": [{"response": r, "gold": g} for r, g in batch]}
            async with gate:
                t0 = time.perf_counter()
                resp = await client.post(f"{url}/v1/verify", json=body)
                latencies.append(time.perf_counter() - t0)
                errors += resp.status_code != 200
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(HTTP_REQUESTS)))
        wall = time.perf_counter() - t0
    return wall, latencies, errors


# Answers the screen lets through that still cost a parser its whole timeout (measured
# 2026-12-01: each ran into the 5 s kill), and one it now catches ((10^8)!).
HOSTILE = ["\\sum_{k=1}^{9999} k^{k}", "9^{9^{9}}", "(x+1)^{9999}", "\\prod_{k=1}^{9999} (x+k)", "(10^8)!"]
CALLERS, HOSTILE_CALLERS, QUIET_S, MIXED_S = 8, 2, 20.0, 40.0


async def mixed_load(url: str, data, seconds: float, hostile_callers: int, seed: int):
    """CALLERS callers for ``seconds``, each sending batches of HTTP_BATCH back to back; the
    first ``hostile_callers`` put two hostile answers in every batch. Latency per batch, by
    kind (a caller waits for its answer before it sends again, as a client would)."""
    import httpx

    rng = random.Random(seed)
    out: dict[str, list[float]] = {"benign": [], "hostile": []}
    errors = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=300) as client:
        async def caller(hostile: bool) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                batch = [rng.choice(data) for _ in range(HTTP_BATCH)]
                kind = "hostile" if hostile else "benign"
                if hostile:
                    for j in rng.sample(range(HTTP_BATCH), 2):
                        batch[j] = (f"so \\boxed{{{rng.choice(HOSTILE)}}}", "2")
                t0 = time.perf_counter()
                resp = await client.post(f"{url}/v1/verify",
                                         json={"items": [{"response": r, "gold": g} for r, g in batch]})
                out[kind].append(time.perf_counter() - t0)
                errors += resp.status_code != 200
        await asyncio.gather(*(caller(i < hostile_callers) for i in range(CALLERS)))
    return out, errors


def pct99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else float("nan")


PY_CHECKS = 60


def python_checks(n: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        k = rng.randint(2, 9)
        body = f"return sum(range(n)) * {k}" if i % 3 else f"return sum(range(n + 1)) * {k}"
        code = f"import functools\n\n@functools.lru_cache\ndef f(n):\n    {body}\n"
        out.append((code, [f"assert f({n}) == {sum(range(n)) * k}" for n in (3, 10, 100, 1000)]))
    return out


def python_task(checks) -> tuple[float, float, int]:
    """Seconds for all checks under bubblewrap and bare, and the passes (equal, or it fails)."""
    from services.verifier.code_sandbox import CodeSandbox
    from services.verifier.isolation.bubblewrap import BubblewrapIsolation

    isolated = CodeSandbox(timeout_s=10.0, memory_mb=256, isolation="required")
    bare = CodeSandbox(timeout_s=10.0, memory_mb=256, isolation="best_effort")
    bare.bubblewrap = BubblewrapIsolation("/nonexistent/bwrap")  # forces the process backend
    times, passes = {}, {}
    for name, box in (("bare", bare), ("isolated", isolated), ("bare2", bare), ("isolated2", isolated)):
        t0 = time.perf_counter()
        results = [box.run(code, tests) for code, tests in checks]
        times[name] = time.perf_counter() - t0
        passes[name] = sum(r.passed for r in results)
        want = "bubblewrap" if name.startswith("isolated") else "process"
        assert all(r.isolation == want for r in results), name
    assert len(set(passes.values())) == 1, passes  # the same verdicts either way
    return min(times["isolated"], times["isolated2"]), min(times["bare"], times["bare2"]), passes["bare"]


def accuracy() -> dict[str, tuple[float, float, int]]:
    """set -> (our agreement, math-verify's, pairs)."""
    from services.common.config import VerifierConfig
    from services.verifier.agreement import SETS, by_category, load_cases, math_verify_verdicts, our_verdicts
    from services.verifier.scoring import Scorer

    scorer = Scorer(VerifierConfig(workers=2))
    out = {}
    try:
        for name, path in SETS.items():
            cases = load_cases(path)
            ours = by_category(cases, our_verdicts(scorer, cases))
            peer = by_category(cases, math_verify_verdicts(cases))
            rows = ", ".join(f"{cat} {ours[cat][0]}/{n} vs {peer[cat][0]}/{n}"
                             for cat, (_, n) in sorted(ours.items()) if cat != "all")
            print(f"accuracy {name}: {rows}")
            out[name] = (ours["all"][0] / ours["all"][1], peer["all"][0] / peer["all"][1], ours["all"][1])
    finally:
        scorer.close()
    return out


R, A = 190_000, 2_000  # a response near the API's 200k limit; an answer or gold at the screen's limit
HOSTILE_TEXTS = {"open boxes": "\\boxed{" * (R // 7), "dollars": "$" * R, "joined boxes": "\\boxed{1}, " * (R // 11),
                 "anchors": "the answer is " * (R // 14), "spaced numbers": "1 000 " * (R // 6),
                 "formulas": "$x$ and " * (R // 8), "deep braces": "\\boxed{" + "{" * R + "}",
                 "blank lines": "    \n" * (R // 5), "gap of spaces": "\\boxed{1}" + " " * R + "\\boxed{2}",
                 "anchor then spaces": "the answer is" + " " * R,
                 "lone dollar": "$" + "\\)\\]" * (R // 4) + "\n$x^2$"}
HOSTILE_ANSWERS = {"spaces": " " * A, "x< spaces <": "x<" + " " * (A - 4) + "<", "1 spaces 1": "1" + " " * (A - 2) + "1",
                   "} spaces": "}" + " " * (A - 2) + "a", "unit spaces": "5\\text{a" + " " * (A - 10) + "}",
                   "list": "1," * (A // 2), "thousands": "1" + ",000" * (A // 4 - 1) + "0", "equals": "x=" * (A // 2),
                   "matrix": "\\begin{pmatrix}" + "1&" * (A // 2 - 20) + "\\end{pmatrix}", "words": "1" + " ab" * (A // 3)}


def hostile_extraction() -> tuple[str, float, float]:
    """The slowest shape relative to one regex pass over it: (name, seconds, one pass's seconds).
    Responses go through both extraction modes; answers and golds through the fast path on
    either side (what the server process itself runs, before any sandbox)."""
    import re

    from services.verifier.equivalence import fast_equivalent
    from services.verifier.extract import extract_answer

    work = {**{name: (lambda t=text: [extract_answer(t, m) for m in ("boxed", "lenient")], text)
               for name, text in HOSTILE_TEXTS.items()},
            **{name: (lambda t=text: (fast_equivalent(t, "5"), fast_equivalent("5", t), fast_equivalent(t, t)), text)
               for name, text in HOSTILE_ANSWERS.items()}}
    worst = ("", 0.0, 1.0)
    for name, (run, text) in work.items():
        t0 = time.perf_counter()
        run()
        took = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(10):
            re.findall(r"\d", text)
        one_pass = (time.perf_counter() - t0) / 10
        if took / one_pass > worst[1] / worst[2]:
            worst = (name, took, one_pass)
    return worst


def main() -> None:
    from services.common.http import wait_healthy
    from services.common.net import free_port

    data = items(N_ITEMS)
    serial_s, _, _, _ = core(data, workers=1)
    ours_s, peer_s, agree, (fast, sandbox) = core(data, workers=2)
    print(f"core: {N_ITEMS} items; ours {N_ITEMS / ours_s:.0f} items/s with 2 sandbox workers "
          f"({N_ITEMS / serial_s:.0f} with 1; fast path {fast}, sandbox {sandbox}); "
          f"math-verify {N_ITEMS / peer_s:.0f} items/s; verdict agreement {agree:.4f}")

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "verifier", "--port", str(port),
                             "--config", "tiny"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(url, proc=proc):
            raise SystemExit("verifier did not become healthy")
        asyncio.run(http_load(url, data[:64]))  # warm-up
        wall, lat, errors = asyncio.run(http_load(url, data))
        quiet, quiet_errors = asyncio.run(mixed_load(url, items(N_ITEMS, seed=1), QUIET_S, 0, seed=1))
        mixed, mixed_errors = asyncio.run(mixed_load(url, items(N_ITEMS, seed=2), MIXED_S, HOSTILE_CALLERS,
                                                     seed=2))
    finally:
        proc.terminate()
        proc.wait(15)
    # the peer: the same hostile mix against one sandbox lane for everything (the design before)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "verifier", "--port", str(port),
                             "--config", "tiny", "--set", "verifier.slow_lane_workers=0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_healthy(f"http://127.0.0.1:{port}", proc=proc):
            raise SystemExit("verifier (one lane) did not become healthy")
        one_lane, one_lane_errors = asyncio.run(mixed_load(f"http://127.0.0.1:{port}", items(N_ITEMS, seed=2),
                                                           MIXED_S, HOSTILE_CALLERS, seed=2))
    finally:
        proc.terminate()
        proc.wait(60)
    lat_ms = sorted(x * 1000 for x in lat)
    p50 = statistics.median(lat_ms)
    p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))]
    items_per_s = HTTP_REQUESTS * HTTP_BATCH / wall
    print(f"http: {HTTP_REQUESTS} requests x {HTTP_BATCH} items, {HTTP_CONCURRENCY} in flight: "
          f"{items_per_s:.0f} items/s, {HTTP_REQUESTS / wall:.0f} req/s, p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms, errors {errors}")
    print(f"hostile mix: {CALLERS} callers x {HTTP_BATCH}-item batches; all benign, {QUIET_S:.0f} s: "
          f"{len(quiet['benign']) / QUIET_S:.1f} req/s, benign p99 {pct99(quiet['benign']) * 1000:.0f} ms; "
          f"{HOSTILE_CALLERS} of them putting 2 hostile answers in every batch, {MIXED_S:.0f} s: benign "
          f"{len(mixed['benign']) / MIXED_S:.1f} req/s, p50 {statistics.median(mixed['benign']) * 1000:.0f} ms "
          f"p99 {pct99(mixed['benign']) * 1000:.0f} ms; hostile {len(mixed['hostile'])} requests, p99 "
          f"{pct99(mixed['hostile']) * 1000:.0f} ms; errors {quiet_errors + mixed_errors}")
    print(f"hostile mix, one sandbox lane for all (verifier.slow_lane_workers=0), {MIXED_S:.0f} s: benign "
          f"{len(one_lane['benign']) / MIXED_S:.1f} req/s, p99 {pct99(one_lane['benign']) * 1000:.0f} ms; "
          f"errors {one_lane_errors}")
    acc = accuracy()
    shape, extract_s, pass_s = hostile_extraction()
    print(f"hostile text: slowest shape '{shape}' ({len(HOSTILE_TEXTS) + len(HOSTILE_ANSWERS)} shapes: "
          f"190k-character responses, 2000-character answers and golds) {extract_s * 1000:.1f} ms; "
          f"one regex pass over it {pass_s * 1000:.2f} ms")
    iso_s, bare_s, passed = python_task(python_checks(PY_CHECKS))
    print(f"python: {PY_CHECKS} checks x 4 tests ({passed} passed either way), one at a time: "
          f"bubblewrap {PY_CHECKS / iso_s:.1f} checks/s ({iso_s / PY_CHECKS * 1000:.0f} ms each), "
          f"bare process {PY_CHECKS / bare_s:.1f} checks/s ({bare_s / PY_CHECKS * 1000:.0f} ms each); "
          "best of two rounds each")
    print(f"RESULT verifier_vs_math_verify {peer_s / ours_s:.2f} x vs math-verify")
    print(f"RESULT verifier_one_worker_vs_math_verify {peer_s / serial_s:.2f} x vs math-verify")
    print(f"RESULT verifier_agreement_with_math_verify {agree:.4f} fraction vs math-verify")
    print(f"RESULT verifier_http_items_per_s_vs_math_verify {items_per_s / (N_ITEMS / peer_s):.2f} x vs math-verify")
    for name, (ours, peer, n) in acc.items():
        print(f"RESULT verifier_{name}_agreement_vs_math_verify {ours / peer:.3f} x vs math-verify "
              f"({ours:.3f} vs {peer:.3f} on {n} pairs)")
    print(f"RESULT verifier_hostile_text_vs_one_regex_pass {extract_s / pass_s:.1f} x vs one-regex-pass")
    print(f"RESULT verifier_python_isolated_vs_bare {bare_s / iso_s:.2f} x vs no-isolation")
    print(f"RESULT verifier_benign_p99_under_hostile_load {pct99(mixed['benign']):.2f} s vs goal-1s")
    print(f"RESULT verifier_benign_p99_hostile_vs_alone {pct99(mixed['benign']) / pct99(quiet['benign']):.2f} x vs benign-alone")
    print(f"RESULT verifier_benign_p99_lanes_vs_one_lane {pct99(mixed['benign']) / pct99(one_lane['benign']):.3f} x vs one-lane")


if __name__ == "__main__":
    main()
