"""The whole loop as separate processes: real Redis, vLLM generator, verifier, DeepSpeed trainer.

One run of the stack checks the walking skeleton's acceptance: after N steps the generator
serves version N; every trained group was generated within the staleness bound; the ledger
balances; a verifier killed with SIGKILL while holding unacknowledged rollouts loses none of
them (the supervisor restarts it and it re-reads its pending entries); and a trainer killed with
SIGKILL after two steps resumes from its checkpoint with no step committed twice; and a Redis
restart (AOF on) after four steps loses nothing.
"""

import json
import re
import signal
import time

import httpx
import pytest

from services.common import streams
from services.common.ledger import Ledger
from services.stack import Stack

pytestmark = pytest.mark.slow
STEPS = 6


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    from services.common.config import load_config
    from services.common.net import free_port

    run_dir = tmp_path_factory.mktemp("loop")
    cfg = load_config("quick", [
        f"run_dir={run_dir}", f"model.path={tiny_model_dir}", f"trainer.total_steps={STEPS}",
        f"generator.port={free_port()}", f"verifier.port={free_port()}", f"trainer.port={free_port()}",
        "generator.gpu_memory_utilization=0.1", "redis.visibility_timeout_s=5",
    ], environ={})
    stack = Stack(cfg).start()
    try:
        s = stack.streams()
        # Kill the verifier at a moment it holds rollouts it has read but not acknowledged.
        deadline = time.monotonic() + 240
        killed_with_pending = 0
        while time.monotonic() < deadline and not killed_with_pending:
            stack.supervise()
            try:
                pending = s.r.xpending_range(s.key(streams.ROLLOUTS), "verifier", "-", "+", 100,
                                             consumername="verifier-0")
            except Exception:
                pending = []  # the group does not exist until the verifier starts
            if pending:
                stack.kill("verifier", signal.SIGKILL)
                stack.proc("verifier").popen.wait(timeout=30)
                time.sleep(0.2)  # let Redis apply whatever the dead process had already sent
                # it may have acknowledged them between the query and the kill: count what a
                # dead consumer still holds (supervise() restarts it; then try again)
                killed_with_pending = len(s.r.xpending_range(
                    s.key(streams.ROLLOUTS), "verifier", "-", "+", 100, consumername="verifier-0"))
            time.sleep(0.01)
        assert killed_with_pending, "never caught the verifier holding pending rollouts"
        live = {name: (httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json(),
                       httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
                for name, port in (("generator", cfg.generator.port), ("trainer", cfg.trainer.port))}
        # Then kill the trainer (SIGKILL) once it has committed two steps: the supervisor restarts
        # it and it resumes from its checkpoint of the last committed version.
        while s.r.llen(s.key("trainer:steps")) < 2 and time.monotonic() < deadline:
            stack.supervise()
            time.sleep(0.05)
        stack.kill("trainer", signal.SIGKILL)
        # Then restart Redis itself (AOF on, same port and data dir) once 4 steps are committed.
        while s.r.llen(s.key("trainer:steps")) < 4 and time.monotonic() < deadline:
            stack.supervise()
            time.sleep(0.05)
        stack.redis.stop()
        stack.redis.start()
        stack.wait_trainer(timeout_s=300, poll_s=0.5)
        yield stack, s, killed_with_pending, live
    finally:
        stack.stop()


def test_generator_serves_the_final_version(finished_run):
    stack, s, *_ = finished_run
    deadline = time.monotonic() + 30  # the generator loads the last version on its next poll
    while time.monotonic() < deadline and s.r.hget(s.key("generators"), "generator-0") != str(STEPS).encode():
        time.sleep(0.5)
    assert s.r.hget(s.key("generators"), "generator-0") == str(STEPS).encode()
    assert s.r.get(s.key("trainer:finished")) == str(STEPS).encode()
    # every sync passed the gate: the engine's log-probs of the trainer's probe agreed
    sync = json.loads(s.r.hget(s.key("generators:sync"), "generator-0"))
    assert sync["passed"] and sync["version"] == STEPS, sync
    assert sync["gate_max_difference"] < 1e-4, sync


def test_trained_groups_respect_the_staleness_bound(finished_run):
    stack, s, *_ = finished_run
    max_staleness = stack.cfg.trainer.max_staleness
    trained = [v for v in Ledger(s).statuses().values() if v.startswith("trained:")]
    assert len(trained) == STEPS * stack.cfg.trainer.groups_per_step
    for status in trained:
        step, version = map(int, re.match(r"trained:(\d+):v(\d+)", status).groups())
        # trained at `step` means the policy was at version step-1
        assert version >= (step - 1) - max_staleness, status


def test_accounting_balances_and_nothing_is_lost(finished_run):
    stack, s, killed_with_pending, _ = finished_run
    ledger = Ledger(s)
    counts, audit = ledger.counts(), ledger.audit()
    assert counts["enqueued"] == counts["trained"] + counts["dropped"]
    assert audit.get("enqueued", 0) == 0 and audit["prompts"] == counts["enqueued"]
    # every drop has a reason; nothing was dropped because of the verifier crash
    assert set(k for k in counts if k.startswith("dropped:")) <= {"dropped:run_ended", "dropped:too_stale",
                                                                  "dropped:zero_variance"}
    assert s.dead_letters() == []
    assert stack.proc("verifier").restarts >= 1
    assert stack.proc("trainer").restarts >= 1
    log = (stack.run_dir / "logs" / "verifier-0.log").read_text()
    assert "re-reading" in log or "reclaimed" in log


def test_the_restarted_trainer_resumed_from_its_checkpoint(finished_run):
    stack, s, *_ = finished_run
    log = (stack.run_dir / "logs" / "trainer-0.log").read_text()
    assert "resumed from checkpoint v" in log
    steps = [json.loads(x)["step"] for x in s.r.lrange(s.key("trainer:steps"), 0, -1)]
    assert steps == list(range(1, STEPS + 1))  # each step committed exactly once


def test_step_versions_have_no_gaps(finished_run):
    _, s, *_ = finished_run
    history = [e for e in s.r.xrange(s.key(streams.WEIGHTS))]
    from services.common.schemas import decode
    versions = [decode(fields[b"data"]).version for _, fields in history]
    assert versions == list(range(1, STEPS + 1))


def test_running_services_answer_health_and_metrics(finished_run):
    *_, live = finished_run
    gen_health, gen_metrics = live["generator"]
    assert gen_health["service"] == "generator" and gen_health["ready"] is True
    assert "t1_generator_tokens_total" in gen_metrics
    trainer_health, trainer_metrics = live["trainer"]
    assert trainer_health["service"] == "trainer" and trainer_health["ready"] is True
    assert "t1_trainer_policy_version" in trainer_metrics
