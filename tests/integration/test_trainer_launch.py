"""`t1 trainer` launched as the Helm chart launches it: torchrun, two nodes of one rank each.

The command line is the chart's own (rendered by Helm), with only what a cluster provides
replaced: the pod index, pod 0's address, ports and the config file's path. Two torchrun
processes here play the two pods; gloo joins their ranks. Each serves /health (it is its pod's
local rank 0); rank 0 alone writes Redis; a SIGTERM to the second pod alone stops both ranks
together between steps, with nothing dropped, and the first pod exits at once asking to be
restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import helm_python
import torch
import yaml
from test_trainer import scorer  # noqa: F401  (a fixture)
from test_trainer_distributed import GROUPS, OVERRIDES, publish_fixed_batch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common import streams
from services.common.config import dump_config, load_config
from services.common.ledger import Ledger
from services.common.net import free_port
from services.trainer.main import PEER_STOPPED

ROOT = Path(__file__).resolve().parents[2]
NODES = 2


def chart_trainer_command() -> list[str]:
    values = {"trainer": {"replicas": NODES, "ranksPerPod": 1, "resources": {"limits": {}}}}
    with helm_python.Chart.load(ROOT / "k8s" / "t1") as chart:
        rendered = chart.render(values=values, name="t1", namespace="t1")
    docs = [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "t1-trainer"]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return c["command"] + c["args"]


def as_pod(command: list[str], index: int, master_port: int, http_port: int, config: Path) -> list[str]:
    out = []
    for arg in command:
        if arg.startswith("--master-addr="):
            arg = "--master-addr=127.0.0.1"  # pod 0's DNS name in the cluster
        elif arg.startswith("--master-port="):
            arg = f"--master-port={master_port}"
        out.append(arg.replace("$(POD_INDEX)", str(index)))  # the kubelet's expansion
    for flag, value in (("--port", str(http_port)), ("--config", str(config)), ("--host", "127.0.0.1")):
        out[out.index(flag) + 1] = value
    return out


def health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def wait_for(what, cond, procs, logs, timeout_s=300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        dead = [p.returncode for p in procs if p.poll() is not None]
        assert not dead, f"a pod exited ({dead}) before {what}:\n{tails(logs)}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{tails(logs)}")


def tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)


def test_chart_command_runs_two_nodes_and_a_stop_on_either_stops_both(tmp_path, tiny_model_dir,
                                                                      redis_server, scorer):  # noqa: F811
    s = streams.Streams(streams.connect(redis_server.url), prefix=f"test-launch-{uuid.uuid4().hex[:8]}")
    # 3 steps asked for, groups for 2: after those the run waits for more, and then gets stopped
    cfg = load_config("quick", [f"run_dir={tmp_path / 'run'}", f"model.path={tiny_model_dir}",
                                f"redis.url={redis_server.url}", f"redis.prefix={s.prefix}",
                                *OVERRIDES, "trainer.total_steps=3", "trainer.checkpoint_interval=0",
                                "trainer.dist_timeout_s=120"], environ={})
    config = tmp_path / "config.yaml"
    dump_config(cfg, config)

    command, master_port = chart_trainer_command(), free_port()
    ports = [free_port() for _ in range(NODES)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # torchrun, t1
    logs = [tmp_path / f"pod{i}.log" for i in range(NODES)]
    procs = []
    for i in range(NODES):
        with open(logs[i], "wb") as log:
            procs.append(subprocess.Popen(as_pod(command, i, master_port, ports[i], config), cwd=ROOT,
                                          env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    try:
        wait_for("both pods' /health", lambda: all((health(p) or {}).get("ready") for p in ports),
                 procs, logs)
        states = [health(p) for p in ports]
        assert [(x["rank"], x["world_size"]) for x in states] == [(0, 2), (1, 2)]

        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        publish_fixed_batch(s, cfg, tok, model, scorer)
        steps_key = s.key("trainer:steps")
        wait_for("two steps", lambda: s.r.llen(steps_key) == 2, procs, logs)
        records = [json.loads(r) for r in s.r.lrange(steps_key, 0, -1)]
        assert [r["world_size"] for r in records] == [NODES, NODES]
        wait_for("pod 1 at v2", lambda: (health(ports[1]) or {}).get("version") == 2, procs, logs)

        os.kill(procs[1].pid, signal.SIGTERM)  # the second pod only (torchrun passes it on)
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    # pod 0's rank left by the agreed stop with "restart me" (the world must re-form), and its
    # torchrun exited at once, failed, instead of waiting for pod 1's at its exit barrier
    pod0 = logs[0].read_text()
    assert codes[0] != 0 and "stopped because another rank was" in pod0, tails(logs)
    assert f"exitcode  : {PEER_STOPPED}" in pod0
    # nothing dropped: the stop is not the run's end; every trained group once, the rest pending
    counts = Ledger(s).counts()
    assert counts["trained"] == 2 * GROUPS and counts.get("dropped", 0) == 0
    assert s.r.get(s.key("trainer:finished")) is None
    assert s.length(streams.WEIGHTS) == 2
