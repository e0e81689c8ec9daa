"""Where an in-place weight reload's time goes, inside the engine's worker (cProfile).

A randomly initialised model of the Qwen2.5-0.5B shape (bf16, 988 MB) is served by vLLM's
engine and reloaded in place from its own files, as the disk transport does (hash aside). The
worker profiles REPEATS reloads after a first (cold) one; the lines give the share of the
reload that the CPU backend spends making its oneDNN GEMM handlers (re-packing every linear
layer's weights for its kernels, which an in-place copy leaves stale) and the share spent in
tensor copies, against the whole reload, and the whole reload against a plain page-cache read
of the same bytes. A GPU engine has no such re-packing step for unquantized weights.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _model_shapes import build_qwen_shape, plain_read_seconds  # noqa: E402

REPEATS = 3


def profiled_reload(worker, path: str) -> dict:
    """Runs in the worker process: one in-place reload under cProfile."""
    import cProfile
    import pstats
    import time

    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    worker.reload_weights(weights_path=path, is_checkpoint_format=True)
    profile.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(profile).stats
    by_name = {}
    for (_file, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        by_name[name] = by_name.get(name, 0.0) + tottime
    repack = sum(t for name, t in by_name.items() if "onednn" in name or "dnnl" in name)
    copies = sum(t for name, t in by_name.items() if name == "<method 'copy_' of 'torch._C.TensorBase' objects>")
    return {"total": total, "repack": repack, "copy": copies}


def main() -> None:
    # the profiling function travels to the worker pickled: this process only
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from services.common.config import ModelConfig
    from services.trainer.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_model(ModelConfig(), Path(tmp) / "tiny")
        model = build_qwen_shape(Path(tmp) / "q05", tiny)
        nbytes = sum(f.stat().st_size for f in model.glob("*.safetensors"))
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(
            model=str(model), dtype="bfloat16", gpu_memory_utilization=0.2, enforce_eager=True,
            max_model_len=256))

        async def reloads() -> list[dict]:
            await llm.collective_rpc(profiled_reload, args=(str(model),))  # cold: first touch
            return [(await llm.collective_rpc(profiled_reload, args=(str(model),)))[0] for _ in range(REPEATS)]

        try:
            runs = asyncio.run(reloads())
        finally:
            llm.shutdown()
            llm.shutdown = lambda *a, **k: None  # not again from __del__ at interpreter exit
        read = sorted(plain_read_seconds(model) for _ in range(REPEATS))[REPEATS // 2]
    for r in runs:
        print(f"reload {nbytes / 1e6:.0f} MB: {r['total']:.3f} s, of it oneDNN handlers {r['repack']:.3f} s, "
              f"tensor copies {r['copy']:.3f} s")
    mid = sorted(runs, key=lambda r: r["total"])[REPEATS // 2]
    print(f"plain read of the same bytes (page cache): {read:.3f} s")
    print(f"RESULT reload_repack_share {mid['repack'] / mid['total']:.2f} fraction vs whole-reload")
    print(f"RESULT reload_copy_share {mid['copy'] / mid['total']:.2f} fraction vs whole-reload")
    print(f"RESULT reload_vs_read {read / mid['total']:.2f} x vs plain-read")
    print(f"RESULT reload_without_repack_vs_read {read / (mid['total'] - mid['repack']):.2f} x vs plain-read")


if __name__ == "__main__":
    main()
