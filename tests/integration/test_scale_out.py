"""Two generator replicas on the local stack share the prompt stream through the consumer group."""

import os
import signal
import time
from collections import Counter

import pytest

from services.common import streams
from services.common.config import load_config
from services.common.http import wait_healthy
from services.common.ledger import Ledger
from services.common.net import free_port
from services.common.schemas import decode
from services.stack import Stack

pytestmark = pytest.mark.slow
STEPS = 3


COLLECTIVE = ["generator.weight_transport=collective", "trainer.weight_broadcast=true",
              "trainer.broadcast_timeout_s=10", "generator.sync_mode=abort"]


def producers(s) -> set[str]:
    return {decode(f[b"data"]).generator_id for _, f in s.r.xrange(s.key(streams.ROLLOUTS))}


@pytest.mark.parametrize("transport", ["filesystem", "collective"])
def test_two_generators_split_the_work_and_both_end_on_the_newest_version(tmp_path, tiny_model_dir, transport):
    """filesystem: a replica stopped with SIGTERM drains and is started again. collective: the
    trainer broadcasts each version to both replicas; one is SIGKILLed mid-run (the sync that
    names it times out, the other loads the files), restarts, registers and is sent the newest."""
    gen_port = free_port()
    extra = COLLECTIVE + [f"trainer.broadcast_port={free_port()}"] if transport == "collective" else []
    cfg = load_config("quick", [
        f"run_dir={tmp_path / 'run'}", f"model.path={tiny_model_dir}", f"trainer.total_steps={STEPS}",
        "generator.replicas=2", f"generator.port={gen_port}", "generator.max_prompts_per_batch=1",
        f"verifier.port={free_port()}", f"trainer.port={free_port()}",
        "generator.gpu_memory_utilization=0.1", "generator.max_inflight_groups=2",
        "redis.keep_acked=true",  # the test reads the rollouts stream afterwards
        *extra,
    ], environ={})
    with Stack(cfg, services=("verifier", "generator")) as stack:
        # both engines up before any work exists, so that neither replica finds the run over
        for port in (gen_port, gen_port + 1):
            assert wait_healthy(f"http://127.0.0.1:{port}", timeout_s=300)
        s = stack.streams()
        # generator-1 publishes a group before it is stopped (a SIGKILLed replica loses its batch
        # in flight, and a fast generator-0 could otherwise produce every rollout of the run):
        # generator-0 is held (SIGSTOP) until generator-1's first group is out
        held = stack.proc("generator-0").popen.pid
        os.kill(held, signal.SIGSTOP)
        try:
            stack.spawn("trainer")
            deadline = time.monotonic() + 300
            while "generator-1" not in producers(s):
                assert time.monotonic() < deadline, "generator-1 published nothing"
                stack.supervise()
                time.sleep(0.1)
        finally:
            os.kill(held, signal.SIGCONT)
        assert sorted(stack.procs) == ["generator-0", "generator-1", "trainer-0", "verifier-0"]
        # SIGTERM drains a replica: it finishes (and publishes) its batch, then exits 0
        while s.r.llen(s.key("trainer:steps")) < 1:
            stack.supervise()
            time.sleep(0.1)
        replica = stack.proc("generator-1").popen
        if transport == "collective":
            stack.kill("generator-1", signal.SIGKILL)
            assert replica.wait(60) == -signal.SIGKILL
        else:
            stack.kill("generator-1", signal.SIGTERM)
            assert replica.wait(60) == 0
        stack.wait_trainer(timeout_s=400, poll_s=0.5)  # the supervisor starts it again
        assert stack.proc("generator-1").restarts == 1
        deadline = time.monotonic() + 60  # each replica loads the last version on its next poll
        while time.monotonic() < deadline:
            served = {k.decode(): int(v) for k, v in s.r.hgetall(s.key("generators")).items()}
            if served == {"generator-0": STEPS, "generator-1": STEPS}:
                break
            time.sleep(0.5)
        assert served == {"generator-0": STEPS, "generator-1": STEPS}
        if transport == "collective":
            import json

            last = json.loads(s.r.get(s.key("trainer:broadcast")))
            assert last["ok"] and last["version"] == STEPS, last
            syncs = {k.decode(): json.loads(v) for k, v in s.r.hgetall(s.key("generators:sync")).items()}
            assert syncs["generator-0"]["via"] == "broadcast", syncs
            assert all(x["passed"] and x["gate_max_difference"] < 1e-4 for x in syncs.values()), syncs
        rollouts = [decode(f[b"data"]) for _, f in s.r.xrange(s.key(streams.ROLLOUTS))]
        per_prompt = Counter(g.prompt.prompt_id for g in rollouts)
        assert max(per_prompt.values()) == 1  # no group generated twice
        assert producers(s) == {"generator-0", "generator-1"}
        counts = Ledger(s).counts()
        assert counts["trained"] == STEPS * cfg.trainer.groups_per_step
        assert counts["enqueued"] == counts["trained"] + counts["dropped"]
