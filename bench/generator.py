"""Generator speed: the rollout service vs offline vLLM and vs Hugging Face, and weight sync.

1. Service: the generator's worker on its async engine, prompts published to a real Redis
   (embedded), groups taken from the rollouts stream; wall clock from the first prompt published
   to the last group out (engine start-up excluded), tokens/s over the sampled tokens.
2. Offline vLLM: ``vllm.LLM.generate`` on the same prompts, same sampling settings.
3. Hugging Face ``generate``, one static batch (prompts x K, left padding), same settings, the
   same number of torch threads as vLLM's CPU backend uses here (1).
4. Weight sync, announcement -> serving (hash check + in-place reload + prefix-cache reset, the
   engine paused, then the gate: the engine's log-probs of the trainer's probe), for the tiny
   model and for a randomly initialised model with the Qwen2.5-0.5B shape, vs a plain read of
   the same safetensors bytes; the gate's share of the sync.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _model_shapes import build_qwen_shape, plain_read_seconds  # noqa: E402

N_PROMPTS = 64
K = 8
MAX_TOKENS = 64
TEMPERATURE = 1.0
TOP_P = 1.0



def gen_config(**kw):
    from services.common.config import GeneratorConfig

    return GeneratorConfig(samples_per_prompt=K, max_tokens=MAX_TOKENS, temperature=TEMPERATURE,
                           top_p=TOP_P, gpu_memory_utilization=0.1, max_inflight_groups=N_PROMPTS,
                           max_prompts_per_batch=N_PROMPTS, **kw)


def prompts() -> list[str]:
    from services.common.config import TaskConfig
    from services.data.tasks import make_task

    task = make_task(TaskConfig(seed=4242))
    return [task.problem(i).prompt for i in range(N_PROMPTS)]


def service(model_dir: Path, texts: list[str], redis_url: str) -> tuple[float, int, dict]:
    """Prompts through Redis and the worker; returns (seconds, tokens, weight-sync figures)."""
    from services.common import streams, weights
    from services.common.schemas import Prompt, RolloutGroup
    from services.generator.engine import RolloutEngine
    from services.generator.worker import GeneratorWorker

    s = streams.Streams(streams.connect(redis_url), prefix="bench")
    engine = RolloutEngine(str(model_dir), gen_config())
    worker = GeneratorWorker(s, engine, "bench-gen", gen_config(), block_ms=50)
    out = streams.Consumer(s, streams.ROLLOUTS, "verifier", "bench", RolloutGroup, block_ms=50)
    engine.generate(texts[:4])  # warm-up, not measured
    running = engine.loop.submit(worker.run())
    t0 = time.perf_counter()
    pipe = s.transaction()
    for i, text in enumerate(texts):
        s.publish(streams.PROMPTS, Prompt(prompt_id=f"b{i}", index=i, text=text, gold="0"), pipe)
    pipe.execute()
    tokens, groups = 0, 0
    while groups < len(texts):
        entries = out.read(len(texts))
        groups += len(entries)
        tokens += sum(len(x.token_ids) for e in entries for x in e.msg.samples)
    seconds = time.perf_counter() - t0
    # weight sync of the tiny model through the same worker (announce -> serving)
    sync = sync_latency(engine, worker, s, model_dir, weights, probe=model_probe(model_dir, "float32"))
    engine.loop.loop.call_soon_threadsafe(worker.stop)
    running.result()
    engine.shutdown()
    return seconds, tokens, sync


def model_probe(model_dir: Path, dtype: str):
    """The trainer's probe of a model directory (what ``trainer.weight_probe_*`` publishes)."""
    import torch
    from transformers import AutoModelForCausalLM

    from services.common.weight_probe import WeightProbe, probe_logprobs, probe_token_ids

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    ids = probe_token_ids(model.config.vocab_size, 4, 32)
    return WeightProbe(token_ids=ids, logprobs=probe_logprobs(model, ids))


def sync_latency(engine, worker, s, model_dir: Path, weights, repeats: int = 3, probe=None) -> dict:
    """Announcement -> serving, the median of ``repeats``; with ``probe``, the gate runs too and
    its share of the sync is reported."""
    import shutil

    from services.common.schemas import WeightAnnouncement

    wdir = Path(tempfile.mkdtemp(prefix="bench-w-"))
    times, gates = [], []
    for _ in range(repeats):
        version = worker.version + 1
        final = weights.version_dir(wdir, version)
        shutil.copytree(model_dir, final)
        digest = weights.payload_sha256(final)
        t0 = time.perf_counter()
        weights.announce(s, WeightAnnouncement(version=version, uri=str(final), sha256=digest, step=version,
                                               probe=probe))
        while worker.version < version:
            time.sleep(0.002)
        times.append(time.perf_counter() - t0)
        if probe is not None:
            gates.append((worker.last_sync["gate_seconds"], worker.last_sync["gate_max_difference"]))
    nbytes = worker.last_sync["bytes"]
    shutil.rmtree(wdir, ignore_errors=True)
    out = {"seconds": sorted(times)[len(times) // 2], "bytes": nbytes,
           "read_seconds": plain_read_seconds(model_dir)}
    if gates:
        out |= {"gate_seconds": sorted(g[0] for g in gates)[len(gates) // 2],
                "gate_max_difference": max(g[1] for g in gates)}
    return out


def offline_vllm(model_dir: Path, texts: list[str]) -> tuple[float, int]:
    from vllm import LLM, SamplingParams

    from services.generator.engine import engine_kwargs

    llm = LLM(model=str(model_dir), **engine_kwargs(gen_config()))
    params = SamplingParams(n=K, temperature=TEMPERATURE, top_p=TOP_P, max_tokens=MAX_TOKENS, logprobs=0)
    llm.generate(texts[:4], params, use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate(texts, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return seconds, tokens


def hf(model_dir: Path, texts: list[str]) -> tuple[float, int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kw = dict(do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0,
              max_new_tokens=MAX_TOKENS, num_return_sequences=K, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        model.generate(**tok(texts[:2], return_tensors="pt", padding=True), **{**kw, "max_new_tokens": 4})
        t0 = time.perf_counter()
        out = model.generate(**batch, **kw)
        seconds = time.perf_counter() - t0
    new = out[:, batch["input_ids"].shape[1]:]
    # tokens up to and including the first EOS of each sequence, as vLLM counts them
    tokens = 0
    for row in new.tolist():
        tokens += (row.index(tok.eos_token_id) + 1) if tok.eos_token_id in row else len(row)
    return seconds, tokens


def qwen_shape_sync(tokenizer_src: Path) -> dict:
    """Weight sync for a random model with the Qwen2.5-0.5B shape (bf16 on disk and in vLLM)."""
    from services.common import streams, weights
    from services.common.embedded_redis import EmbeddedRedis
    from services.generator.engine import RolloutEngine
    from services.generator.worker import GeneratorWorker

    root = Path(tempfile.mkdtemp(prefix="bench-qwen05-"))
    t0 = time.perf_counter()
    model_dir = build_qwen_shape(root / "base", tokenizer_src)
    probe = model_probe(model_dir, "bfloat16")  # the HF forward in bf16, as a bf16 trainer's
    gc.collect()
    print(f"qwen2.5-0.5B-shaped random model built in {time.perf_counter() - t0:.0f}s", flush=True)
    redis = EmbeddedRedis(root / "redis").start()
    try:
        s = streams.Streams(streams.connect(redis.url), prefix="bench-q")
        # bf16 on both sides, through different kernels: the gate's tolerance for bf16
        gcfg = gen_config(dtype="bfloat16", kv_cache_gib=1, weight_gate_tolerance=0.1)
        engine = RolloutEngine(str(model_dir), gcfg)
        worker = GeneratorWorker(s, engine, "bench-q", gcfg, block_ms=50)
        running = engine.loop.submit(worker.run())
        sync = sync_latency(engine, worker, s, model_dir, weights, repeats=2, probe=probe)
        engine.loop.loop.call_soon_threadsafe(worker.stop)
        running.result()
        engine.shutdown()
    finally:
        redis.stop()
    return sync


def main() -> None:
    from services.common.config import ModelConfig
    from services.common.embedded_redis import EmbeddedRedis
    from services.trainer.tiny_model import build_tiny_model

    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    model_dir = build_tiny_model(ModelConfig(hidden_size=128, num_layers=4), root / "model")
    texts = prompts()
    redis = EmbeddedRedis(root / "redis").start()
    try:
        svc_s, svc_tok, sync_tiny = service(model_dir, texts, redis.url)
    finally:
        redis.stop()
    print(f"service: {N_PROMPTS} prompts x K={K} (max {MAX_TOKENS} tokens) through Redis: "
          f"{svc_s:.2f}s, {svc_tok} tokens, {svc_tok / svc_s:.0f} tok/s, {N_PROMPTS / svc_s:.1f} groups/s",
          flush=True)
    off_s, off_tok = offline_vllm(model_dir, texts)
    print(f"offline vllm.LLM.generate: {off_s:.2f}s, {off_tok} tokens, {off_tok / off_s:.0f} tok/s", flush=True)
    hf_s, hf_tok = hf(model_dir, texts)
    print(f"hf generate (static batch {N_PROMPTS * K}, 1 thread): {hf_s:.2f}s, {hf_tok} tokens, "
          f"{hf_tok / hf_s:.0f} tok/s", flush=True)
    qwen = None
    if os.environ.get("T1_BENCH_SKIP_QWEN") != "1":
        qwen = qwen_shape_sync(model_dir)
    for label, sync in (("tiny", sync_tiny), ("qwen2.5-0.5b-shape", qwen)):
        if sync is None:
            continue
        print(f"weight sync {label}: {sync['bytes'] / 1e6:.1f} MB, announce->serving "
              f"{sync['seconds']:.3f}s ({sync['bytes'] / sync['seconds'] / 1e6:.0f} MB/s); plain read "
              f"{sync['read_seconds']:.3f}s ({sync['bytes'] / sync['read_seconds'] / 1e6:.0f} MB/s); "
              f"gate {sync['gate_seconds'] * 1000:.0f} ms of it, max |log-prob difference| "
              f"{sync['gate_max_difference']:.2g}")
    print(f"bench wall clock {time.perf_counter() - t_start:.0f}s")
    svc_rate, off_rate, hf_rate = svc_tok / svc_s, off_tok / off_s, hf_tok / hf_s
    print(f"RESULT generator_vs_offline_vllm {svc_rate / off_rate:.2f} x vs offline-vllm")
    print(f"RESULT generator_vs_hf {svc_rate / hf_rate:.2f} x vs hf-generate")
    print(f"RESULT weight_sync_seconds {sync_tiny['seconds']:.3f} s vs plain-read "
          f"{sync_tiny['read_seconds']:.4f}")
    if qwen is not None:
        print(f"RESULT weight_sync_seconds_qwen05b_shape {qwen['seconds']:.3f} s vs plain-read "
              f"{qwen['read_seconds']:.3f}")
        print(f"RESULT weight_gate_share_of_sync_qwen05b_shape {qwen['gate_seconds'] / qwen['seconds']:.3f} "
              "fraction vs goal-0.05")
        print(f"RESULT weight_sync_bytes_per_s_vs_read "
              f"{qwen['read_seconds'] / qwen['seconds']:.2f} x vs plain-read")


if __name__ == "__main__":
    main()
