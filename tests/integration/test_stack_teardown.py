"""SIGTERM to a process that runs the local stack (``t1 up``/``t1 demo``) tears the stack down."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from services.common.http import wait_healthy
from services.common.net import free_port

RUNNER = textwrap.dedent("""
    import json, sys, time
    from services.common.config import load_config
    from services.stack import Stack

    cfg = load_config("quick", [f"run_dir={sys.argv[1]}", f"verifier.port={sys.argv[2]}"], environ={})
    with Stack(cfg, services=("verifier",)) as stack:
        pids = {"verifier": stack.proc("verifier").popen.pid, "redis": stack.redis.proc.pid}
        print(json.dumps(pids), flush=True)
        while True:
            time.sleep(0.1)
""")


def _alive(pid: int, group: bool = False) -> bool:
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_services_and_redis_and_exits_143(tmp_path):
    port = free_port()
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path / "run"), str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(runner.stdout.readline())
        assert wait_healthy(f"http://127.0.0.1:{port}", timeout_s=120)
        assert _alive(pids["verifier"], group=True) and _alive(pids["redis"])
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(90) == 128 + signal.SIGTERM
        # the verifier runs in its own session: its whole group (sandbox workers too) goes; the
        # SIGKILLed workers are reaped by init, a moment after the stack's process has exited
        deadline = time.monotonic() + 10
        while _alive(pids["verifier"], group=True) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pids["verifier"], group=True), "the verifier outlived the stack"
        assert not _alive(pids["redis"]), "redis-server outlived the stack"
    finally:
        if runner.poll() is None:  # a failed assertion above: still try the clean way first
            runner.terminate()
            try:
                runner.wait(60)
            except subprocess.TimeoutExpired:
                runner.kill()
