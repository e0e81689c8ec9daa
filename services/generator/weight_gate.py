"""The gate of a weight sync: the engine's own log-probs of the trainer's probe sequences.

After a version is loaded, the engine scores the probe that came with its announcement
(``services/common/weight_probe.py``): each sequence as a prompt, with prompt log-probs, one
token generated. The version is served only if every token agrees with the trainer's within the
tolerance; otherwise the worker restores the weights it served before. The engine must be
running (not paused) to score, so the probe runs after the load and before the version label:
only an OpenAI-API request that arrives in those milliseconds sees the unverified weights.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from services.common.weight_probe import WeightProbe, max_difference


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    max_difference: float
    tolerance: float
    seconds: float

    def describe(self) -> str:
        return (f"max |log-prob difference| {self.max_difference:.3g} "
                f"{'<=' if self.passed else '>'} {self.tolerance:g} ({self.seconds * 1000:.0f} ms)")


async def engine_logprobs(engine, token_ids: list[list[int]], copy: int | None = None) -> list[list[float]]:
    """Per-token log-probs of each sequence under the engine's current weights (raw: temperature
    1, no top-p, so the sampling settings do not change them), on data-parallel copy ``copy``
    (None: wherever vLLM sends them)."""
    from vllm import SamplingParams

    params = SamplingParams(n=1, max_tokens=1, temperature=1.0, top_p=1.0, min_p=0.0,
                            prompt_logprobs=0, detokenize=False)
    tag = uuid.uuid4().hex[:8]

    async def one(i: int, ids: list[int]) -> list[float]:
        final = None
        async for out in engine.llm.generate({"prompt_token_ids": ids}, params, f"weight-probe-{tag}-{copy}-{i}",
                                             data_parallel_rank=copy):
            final = out
        steps = final.prompt_logprobs or []
        return [float(steps[j][ids[j]].logprob) for j in range(1, len(ids))]

    return list(await asyncio.gather(*(one(i, ids) for i, ids in enumerate(token_ids))))


async def check(engine, probe: WeightProbe, tolerance: float) -> GateVerdict:
    t0 = time.monotonic()
    # every data-parallel copy loaded the version: each is scored, the worst decides
    copies = [None] if engine.data_parallel_size == 1 else list(range(engine.data_parallel_size))
    got = await asyncio.gather(*(engine_logprobs(engine, probe.token_ids, c) for c in copies))
    diff = max(max_difference(probe.logprobs, g) for g in got)
    return GateVerdict(diff <= tolerance, diff, tolerance, time.monotonic() - t0)
