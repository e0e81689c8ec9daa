"""Weight sync, announcement -> serving, on both transports, against the bytes' own speed.

For the tiny model and a randomly initialised model of the Qwen2.5-0.5B shape (bf16), one
generator (the real worker loop on vLLM's engine, nothing in flight) and a trainer side in this
process (the HF model in memory, as rank 0 holds it):

- disk: the version's directory announced; the generator hashes it and reloads in place.
  Peer: a plain read of the same safetensors bytes (page cache, right after they were written).
- collective: the version broadcast by ``WeightBroadcaster`` from this process to the engine's
  worker process (gloo), received into vLLM's in-place reload.
  Peer: a raw gloo broadcast of the same bytes (the same buckets, already packed) between the
  same two processes, the engine side receiving without loading.

The gate is off here (its cost is ``t1 bench generator``'s): these are the transports alone.
Each figure is the median of REPEATS syncs.
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

REPEATS = 3


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def wait_serving(worker, version: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while worker.version < version:
        if time.monotonic() > deadline:
            raise TimeoutError(f"v{version} not served after {timeout_s}s: {worker.last_sync}")
        time.sleep(0.002)


def measure(model_dir: Path, dtype: str, label: str, port: int) -> dict:
    import msgspec
    import torch
    from transformers import AutoModelForCausalLM

    from services.common import streams, weight_broadcast, weights
    from services.common.config import GeneratorConfig, TrainerConfig
    from services.common.embedded_redis import EmbeddedRedis
    from services.common.schemas import WeightAnnouncement
    from services.generator.engine import RolloutEngine
    from services.generator.transport import CollectiveReceiver, FilesystemReceiver
    from services.generator.worker import GeneratorWorker
    from services.trainer.broadcaster import WeightBroadcaster

    root = Path(tempfile.mkdtemp(prefix=f"bench-weights-{label}-"))
    redis = EmbeddedRedis(root / "redis").start()
    out: dict = {"label": label}
    try:
        s = streams.Streams(streams.connect(redis.url), prefix="bench-w")
        gcfg = GeneratorConfig(dtype=dtype, kv_cache_gib=1, weight_gate=False, gpu_memory_utilization=0.1,
                               weight_transport="collective", max_tokens=8)
        engine = RolloutEngine(str(model_dir), gcfg)
        collective = CollectiveReceiver(s, "bench-gen")
        engine.loop.run(collective.setup(engine))
        worker = GeneratorWorker(s, engine, "bench-gen", gcfg, block_ms=20, receiver=FilesystemReceiver())
        running = engine.loop.submit(worker.run())
        trainer_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        broadcaster = WeightBroadcaster(TrainerConfig(weight_broadcast=True, broadcast_port=port,
                                                      broadcast_timeout_s=120), s)
        wdir = root / "w"

        def write(version: int):
            path, digest = weights.write_version(
                wdir, version, lambda p: trainer_model.save_pretrained(p, safe_serialization=True), model_dir)
            return path, digest

        disk, read = [], []
        for _ in range(REPEATS):
            v = worker.version + 1
            path, digest = write(v)
            read.append(plain_read_seconds(path))
            t0 = time.perf_counter()
            weights.announce(s, WeightAnnouncement(version=v, uri=str(path), sha256=digest, step=v))
            wait_serving(worker, v)
            disk.append(time.perf_counter() - t0)
        out |= {"disk_s": median(disk), "read_s": median(read), "bytes": worker.last_sync["bytes"]}

        worker.receiver = collective
        coll, sent = [], []
        for _ in range(REPEATS):
            v = worker.version + 1
            path, digest = write(v)
            collective.heartbeat()
            offer = broadcaster.offer(trainer_model, v)
            t0 = time.perf_counter()
            weights.announce(s, WeightAnnouncement(version=v, uri=str(path), sha256=digest, step=v,
                                                   broadcast=offer))
            result = broadcaster.send(trainer_model, v, offer)
            wait_serving(worker, v)
            coll.append(time.perf_counter() - t0)
            assert result["ok"] and worker.last_sync["via"] == "broadcast", (result, worker.last_sync)
            sent.append(result["bytes"])
        out |= {"collective_s": median(coll), "broadcast_bytes": sent[-1],
                "buckets": len(offer.buckets)}

        engine.loop.loop.call_soon_threadsafe(worker.stop)
        running.result()
        raw = []
        for _ in range(REPEATS):
            offer = broadcaster.offer(trainer_model, 10_000 + len(raw))
            tensors = dict(trainer_model.named_parameters())
            packed = []  # the same buckets, packed before the clock starts
            for bucket in offer.buckets:
                buf = torch.empty(bucket.nbytes, dtype=torch.uint8)
                for spec in bucket.tensors:
                    t = tensors[spec.name].detach()
                    n = t.numel() * t.element_size()
                    buf[spec.offset:spec.offset + n].view(t.dtype).view(t.shape).copy_(t)
                packed.append(buf)
            rpc = engine.loop.submit(engine.llm.collective_rpc(
                "receive_weights", kwargs={"offer": msgspec.to_builtins(offer),
                                           "first_rank": 1, "load": False}))
            pg = weight_broadcast.open_group(offer, 0, store=broadcaster.store)
            t0 = time.perf_counter()
            for buf in packed:
                weight_broadcast._broadcast(pg, buf).wait()
            raw.append(time.perf_counter() - t0)
            assert rpc.result(120)[0] == offer.nbytes
            weight_broadcast.close_session(broadcaster.store, offer)
            weight_broadcast.close_group(pg)
        out["raw_broadcast_s"] = median(raw)
        engine.shutdown()
        broadcaster.close()
        trainer_model = None  # noqa: F841 - the HF copy goes before the next shape is built
        gc.collect()
    finally:
        redis.stop()
    return out


def main() -> None:
    from services.common.config import ModelConfig
    from services.common.net import free_port
    from services.trainer.tiny_model import build_tiny_model

    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-weights-"))
    tiny = build_tiny_model(ModelConfig(hidden_size=128, num_layers=4), root / "tiny")
    results = [measure(tiny, "float32", "tiny", free_port())]
    if os.environ.get("T1_BENCH_SKIP_QWEN") != "1":
        results.append(measure(build_qwen_shape(root / "qwen05b-shape", tiny), "bfloat16", "qwen2.5-0.5b-shape", free_port()))
    for r in results:
        mb = r["bytes"] / 1e6
        print(f"{r['label']}: {mb:.1f} MB on disk, {r['broadcast_bytes'] / 1e6:.1f} MB broadcast in "
              f"{r['buckets']} bucket(s)\n"
              f"  disk:       announce->serving {r['disk_s']:.3f}s; plain read {r['read_s']:.4f}s "
              f"({mb / r['read_s']:.0f} MB/s)\n"
              f"  collective: announce->serving {r['collective_s']:.3f}s; raw gloo broadcast "
              f"{r['raw_broadcast_s']:.4f}s ({r['broadcast_bytes'] / 1e6 / r['raw_broadcast_s']:.0f} MB/s)",
              flush=True)
    print(f"bench wall clock {time.perf_counter() - t_start:.0f}s")
    big = results[-1]
    tag = "" if big["label"] == "qwen2.5-0.5b-shape" else "_tiny"
    print(f"RESULT weight_sync_disk_vs_read{tag} {big['read_s'] / big['disk_s']:.3f} x vs plain-read")
    print(f"RESULT weight_sync_collective_vs_broadcast{tag} "
          f"{big['raw_broadcast_s'] / big['collective_s']:.3f} x vs raw-broadcast")
    for r in results:
        print(f"RESULT weight_sync_disk_seconds_{r['label']} {r['disk_s']:.3f} s vs plain-read {r['read_s']:.4f}")
        print(f"RESULT weight_sync_collective_seconds_{r['label']} {r['collective_s']:.3f} s "
              f"vs raw-broadcast {r['raw_broadcast_s']:.4f}")


if __name__ == "__main__":
    main()
