"""Fault injection on the local stack, each fault a real signal to a real process.

One run, four faults in sequence (the verifier kill, the trainer kill between steps and a
graceful Redis restart are in test_loop.py):
1. the generator is SIGKILLed while it holds prompts it has read but not published (mid-generation);
2. the trainer is SIGKILLed while it holds admitted, uncommitted scored groups (mid-step);
3. Redis itself is SIGKILLed (AOF, ``appendfsync everysec``) and started again on its data dir;
4. the verifier is made slow -- SIGSTOP/SIGCONT duty cycles, one pause longer than the visibility
   timeout -- while the live stream entries and Redis memory are sampled.
At the end the books must balance: every admitted prompt trained exactly once or dropped with a
reason, every step committed once, the policy versions without gaps, no dead letters.
"""

import json
import os
import re
import signal
import time

import pytest

from services.common import streams
from services.common.ledger import Ledger
from services.common.schemas import decode
from services.stack import Stack

pytestmark = pytest.mark.slow
STEPS = 10
VISIBILITY_S = 4.0


def _pending(s, stream: str, group: str, consumer: str) -> int:
    try:
        return len(s.r.xpending_range(s.key(stream), group, "-", "+", 100, consumername=consumer))
    except Exception:  # the group does not exist yet, or Redis is restarting
        return 0


def _steps(s) -> int:
    return s.r.llen(s.key("trainer:steps"))


def _wait(stack: Stack, cond, deadline: float, what: str) -> None:
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        stack.supervise()
        time.sleep(0.01)


def _live_entries(s) -> int:
    pipe = s.transaction()  # one snapshot: an entry moving downstream must not count twice
    for name in (streams.PROMPTS, streams.ROLLOUTS, streams.SCORED):
        pipe.xlen(s.key(name))
    return sum(pipe.execute())


@pytest.fixture(scope="module")
def faulted_run(tmp_path_factory, tiny_model_dir):
    from services.common.config import load_config
    from services.common.net import free_port

    cfg = load_config("quick", [
        f"run_dir={tmp_path_factory.mktemp('faults')}", f"model.path={tiny_model_dir}",
        f"trainer.total_steps={STEPS}", "trainer.checkpoint_interval=1",
        f"generator.port={free_port()}", f"verifier.port={free_port()}", f"trainer.port={free_port()}",
        "generator.gpu_memory_utilization=0.1", f"redis.visibility_timeout_s={VISIBILITY_S}",
        "generator.max_prompts_per_batch=2",
    ], environ={})
    stack = Stack(cfg).start()
    facts: dict = {}
    try:
        s = stack.streams()
        deadline = time.monotonic() + 400
        # 1. generator killed while generating
        _wait(stack, lambda: _pending(s, streams.PROMPTS, "generator", "generator-0") > 0,
              deadline, "the generator to hold prompts")
        stack.kill("generator", signal.SIGKILL)
        facts["generator_killed_holding"] = True

        # 2. trainer killed while holding admitted, uncommitted groups
        _wait(stack, lambda: _pending(s, streams.SCORED, "trainer", "trainer-0") > 0,
              deadline, "the trainer to hold scored groups")
        facts["trainer_pending_at_kill"] = _pending(s, streams.SCORED, "trainer", "trainer-0")
        facts["steps_at_trainer_kill"] = _steps(s)
        stack.kill("trainer", signal.SIGKILL)

        # 3. Redis SIGKILLed once a further step is committed, then started on the same AOF
        _wait(stack, lambda: _steps(s) > facts["steps_at_trainer_kill"], deadline,
              "a step after the trainer restart")
        steps_before = _steps(s)
        stack.redis.kill()
        time.sleep(1.0)
        stack.redis.start()
        facts["steps_after_redis_restart"] = _steps(s)
        facts["steps_before_redis_kill"] = steps_before
        # recovered: a step committed after the restart (the pending work of the requests that
        # failed while Redis was down has been re-read or reclaimed by now)
        _wait(stack, lambda: _steps(s) > facts["steps_after_redis_restart"], deadline,
              "a step after the Redis restart")

        # 4. a slow verifier: paused most of the time, once for longer than the visibility timeout
        start_steps, live, memory = _steps(s), [], []
        logs = {role: stack.run_dir / "logs" / f"{role}.log" for role in ("generator-0", "trainer-0")}
        offsets = {role: path.stat().st_size for role, path in logs.items()}
        pauses = [VISIBILITY_S * 2] + [1.0] * 12
        for pause in pauses:
            if _steps(s) >= STEPS - 1:
                break  # keep the last step for after the pauses
            pid = stack.proc("verifier").popen.pid
            os.killpg(pid, signal.SIGSTOP)
            t_end = time.monotonic() + pause
            while time.monotonic() < t_end:
                stack.supervise()  # the trainer comes back from the Redis restart meanwhile
                live.append(_live_entries(s))
                memory.append(int(s.r.info("memory")["used_memory"]))
                time.sleep(0.1)
            os.killpg(pid, signal.SIGCONT)
            time.sleep(0.3)
        facts.update(slow_steps=_steps(s) - start_steps, live_max=max(live),
                     memory_first=memory[0], memory_max=max(memory),
                     slow_logs={role: path.read_bytes()[offsets[role]:].decode(errors="replace")
                                for role, path in logs.items()})

        stack.wait_trainer(timeout_s=max(60.0, deadline - time.monotonic()), poll_s=0.5)
        yield stack, s, facts
    finally:
        stack.stop()


def test_the_run_completes_after_every_fault(faulted_run):
    stack, s, facts = faulted_run
    assert s.r.get(s.key("trainer:finished")) == str(STEPS).encode()
    assert facts["generator_killed_holding"] and stack.proc("generator").restarts >= 1
    assert facts["trainer_pending_at_kill"] > 0 and stack.proc("trainer").restarts >= 1
    # nothing the clients were told was written is lost when Redis dies (write precedes reply)
    assert facts["steps_after_redis_restart"] >= facts["steps_before_redis_kill"]


def test_every_prompt_is_trained_once_or_dropped_with_a_reason(faulted_run):
    stack, s, _ = faulted_run
    ledger = Ledger(s)
    counts, audit = ledger.counts(), ledger.audit()
    assert counts["trained"] == STEPS * stack.cfg.trainer.groups_per_step
    assert counts["enqueued"] == counts["trained"] + counts["dropped"] == audit["prompts"]
    assert audit.get("enqueued", 0) == 0
    trained_steps = [int(re.match(r"trained:(\d+):", v).group(1))
                     for v in ledger.statuses().values() if v.startswith("trained:")]
    per_step = {step: trained_steps.count(step) for step in set(trained_steps)}
    assert per_step == {step: stack.cfg.trainer.groups_per_step for step in range(1, STEPS + 1)}
    reasons = {k for k in counts if k.startswith("dropped:")}
    assert reasons <= {"dropped:run_ended", "dropped:too_stale", "dropped:zero_variance"}, reasons
    assert s.dead_letters() == []


def test_steps_and_versions_have_no_gaps_or_repeats(faulted_run):
    _, s, _ = faulted_run
    steps = [json.loads(x)["step"] for x in s.r.lrange(s.key("trainer:steps"), 0, -1)]
    assert steps == list(range(1, STEPS + 1))
    versions = [decode(f[b"data"]).version for _, f in s.r.xrange(s.key(streams.WEIGHTS))]
    assert versions == list(range(1, STEPS + 1))


def test_a_slow_verifier_holds_memory_flat(faulted_run):
    stack, s, facts = faulted_run
    # Backpressure is admission: the trainer admits at most (max_staleness + 1) x groups per step
    # prompts, and acknowledged entries are deleted, so however slow the verifier, the streams
    # never hold more than that many entries.
    window = (stack.cfg.trainer.max_staleness + 1) * stack.cfg.trainer.groups_per_step
    assert 0 < facts["live_max"] <= window
    assert facts["memory_max"] - facts["memory_first"] < 1_000_000
    # the stack kept working through the pauses, and no pause made anyone's work be reclaimed
    assert facts["slow_steps"] >= 1
    for role, text in facts["slow_logs"].items():
        assert "reclaimed" not in text, role
