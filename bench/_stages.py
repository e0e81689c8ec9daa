"""Where a local-stack RL step's time goes, from what the services already expose.

- trainer: the step records (``trainer:steps`` in Redis): ``compute_s`` (forward, backward,
  optimizer), ``publish_s`` (weight write + announcement), ``time`` (just before the commit).
- generator: its ``/metrics``, sampled every ``period_s`` by ``MetricsSampler`` while the run
  goes: ``t1_generator_inflight_groups`` > 0 means the engine is generating (continuous
  batching: groups are in the engine); ``t1_generator_tokens_total``. A generator without that
  gauge but with per-batch ``published rollouts`` log events (``ts``, ``seconds``) is read from
  its log instead. Weight reloads from its
  ``serving new weights`` log events (``seconds``, minus ``drain_seconds`` where logged: the wait
  for in-flight groups to finish before the load).
- verifier: ``t1_verifier_item_seconds`` (sum over items scored from the queue) from its
  ``/metrics``: scoring time (items may be scored two at a time by the sandbox threads).

Everything is measured over the window between the first and the last step commit (the first
step also holds service start-up), so per-step figures are totals in the window / steps in it.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import httpx


def read_events(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def _metric(text: str, name: str, label: str = "") -> float | None:
    for line in text.splitlines():
        if line.startswith(name) and (not label or label in line):
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] == name:
                return float(value)
    return None


class MetricsSampler(threading.Thread):
    """Polls the generator's and verifier's /metrics; samples are (time, inflight, tokens,
    verifier item-seconds sum, verifier item count)."""

    def __init__(self, gen_port: int, ver_port: int, period_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.urls = (f"http://127.0.0.1:{gen_port}/metrics/", f"http://127.0.0.1:{ver_port}/metrics/")
        self.period_s = period_s
        self.samples: list[tuple[float, float, float, float, float]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=1.0, follow_redirects=True) as client:
            while not self.stop_event.is_set():
                try:
                    g = client.get(self.urls[0]).text
                    v = client.get(self.urls[1]).text
                    inflight = _metric(g, "t1_generator_inflight_groups")
                    if inflight is not None:
                        self.samples.append((
                            time.time(), inflight, _metric(g, "t1_generator_tokens_total") or 0.0,
                            _metric(v, "t1_verifier_item_seconds_sum", 'source="queue"') or 0.0,
                            _metric(v, "t1_verifier_item_seconds_count", 'source="queue"') or 0.0))
                except httpx.HTTPError:
                    pass  # services starting up
                self.stop_event.wait(self.period_s)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


def stack_breakdown(run_dir: Path, records: list[dict], samples: list[tuple]) -> dict[str, float]:
    logs = Path(run_dir) / "logs"
    gen = [e for p in sorted(logs.glob("generator-*.log")) for e in read_events(p)]
    w0, w1 = records[0]["time"], records[-1]["time"]
    steps = len(records) - 1
    window = w1 - w0

    inside = [s for s in samples if w0 <= s[0] <= w1]
    batches = [e for e in gen if e.get("msg") == "published rollouts"]
    if inside:
        gen_busy_frac = sum(s[1] > 0 for s in inside) / len(inside)
    elif batches:  # a generator that logs its batches: busy over [ts - seconds, ts]
        gen_busy_frac = sum(max(0.0, min(e["ts"], w1) - max(e["ts"] - e["seconds"], w0))
                            for e in batches) / window
    else:
        gen_busy_frac = float("nan")  # neither /metrics nor logs told: say so, do not guess
    reloads = [e for e in gen if e.get("msg") == "serving new weights" and w0 <= e["ts"] <= w1]
    reload_s = sum(e["seconds"] - e.get("drain_seconds", 0.0) for e in reloads)
    drain_s = sum(e.get("drain_seconds", 0.0) for e in reloads)

    def at(t: float) -> tuple:  # the last sample at or before t (else the first one)
        before = [s for s in samples if s[0] <= t]
        return before[-1] if before else samples[0]

    ver_s = at(w1)[3] - at(w0)[3] if samples else float("nan")

    gaps = [b["time"] - a["time"] for a, b in zip(records, records[1:])]
    later = records[1:]
    compute = [r["compute_s"] for r in later]
    publish = [r["publish_s"] for r in later]
    wait = [g - c - p for g, c, p in zip(gaps, compute, publish)]
    return {
        "window_s": window, "steps": steps, "samples": len(inside),
        "step_s": statistics.median(gaps),
        "gen_busy_per_step": gen_busy_frac * window / steps,
        "gen_idle_fraction": 1.0 - gen_busy_frac,
        "gen_reload_per_step": reload_s / steps,
        "gen_drain_per_step": drain_s / steps,
        "verify_item_s_per_step": ver_s / steps,
        "trainer_compute": statistics.median(compute),
        "trainer_publish": statistics.median(publish),
        "trainer_wait": statistics.median(wait),
        "trainer_busy_fraction": (sum(compute) + sum(publish)) / window,
    }
