"""An RL run on the local stack whose prompts come from a MATH-format file the user brings: the
prompts flow to the generator, verdicts against the file's gold answers come back, the trainer
is SIGKILLed mid-run and the restarted one carries the cursor on, and the run ends when its
epochs are spent -- every record once per epoch, none repeated."""

import json
import signal
import time
from collections import Counter

import pytest

from services.common import streams
from services.common.config import load_config
from services.common.ledger import Ledger
from services.common.net import free_port
from services.common.schemas import decode
from services.stack import Stack

pytestmark = pytest.mark.slow
RECORDS, EPOCHS = 10, 2


def test_rl_from_a_math_file_survives_a_trainer_kill_and_ends_with_its_epochs(tmp_path, tiny_model_dir):
    data = tmp_path / "math.jsonl"
    # MATH's shape: gold is the last \boxed{} of the solution (numbers the tiny model can write)
    data.write_text("".join(json.dumps({"problem": f"{a}+{a % 7}", "level": "Level 1",
                                        "solution": f"Add them: $\\boxed{{{a + a % 7}}}$"}) + "\n"
                            for a in range(10, 10 + RECORDS)))
    cfg = load_config("quick", [
        f"run_dir={tmp_path / 'run'}", f"model.path={tiny_model_dir}", f"data.train={data}",
        f"data.epochs={EPOCHS}", "trainer.total_steps=1000", "trainer.groups_per_step=3",
        "trainer.checkpoint_interval=1", f"generator.port={free_port()}", f"verifier.port={free_port()}",
        f"trainer.port={free_port()}", "generator.gpu_memory_utilization=0.1",
        "generator.max_prompts_per_batch=2", "redis.keep_acked=true",
    ], environ={})
    with Stack(cfg) as stack:
        s = stack.streams()
        deadline = time.monotonic() + 600
        while s.r.llen(s.key("trainer:steps")) < 2:
            assert time.monotonic() < deadline, "no second step"
            stack.supervise()
            time.sleep(0.05)
        cursor_at_kill = int(s.r.get(s.key("feeder:cursor")))
        assert cursor_at_kill < RECORDS * EPOCHS  # mid-run
        stack.kill("trainer", signal.SIGKILL)
        stack.wait_trainer(timeout_s=max(60.0, deadline - time.monotonic()), poll_s=0.5)
        assert stack.proc("trainer").restarts == 1
        assert stack.proc("trainer").popen.returncode == 0  # it ended because the data did
        prompts = [decode(f[b"data"]) for _, f in s.r.xrange(s.key(streams.PROMPTS))]
        scored = [decode(f[b"data"]) for _, f in s.r.xrange(s.key(streams.SCORED))]
        counts, statuses = Ledger(s).counts(), Ledger(s).statuses()
        steps = [json.loads(x) for x in s.r.lrange(s.key("trainer:steps"), 0, -1)]

    assert [p.index for p in prompts] == list(range(RECORDS * EPOCHS))  # none skipped or repeated
    for epoch in range(EPOCHS):
        origins = [p.origin for p in prompts[epoch * RECORDS:(epoch + 1) * RECORDS]]
        assert sorted(origins) == sorted(f"math.jsonl#{i}" for i in range(RECORDS))
    assert [p.origin for p in prompts[:RECORDS]] != [p.origin for p in prompts[RECORDS:]]  # reshuffled
    gold = {f"math.jsonl#{i}": str(a + a % 7) for i, a in enumerate(range(10, 10 + RECORDS))}
    assert all(p.gold == gold[p.origin] for p in prompts)
    # verdicts came back against the file's gold answers (a correct one extracted that gold)
    assert scored and all(len(g.verdicts) == cfg.generator.samples_per_prompt for g in scored)
    assert all(v.extracted == g.rollout.prompt.gold for g in scored for v in g.verdicts if v.correct)
    # the books: every prompt trained or dropped once, and the run ended on its data, not its budget
    assert counts["enqueued"] == RECORDS * EPOCHS == counts["trained"] + counts.get("dropped", 0)
    assert not any(v == "enqueued" for v in statuses.values())
    assert Counter(v.split(":")[0] for v in statuses.values())["trained"] == counts["trained"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1)) and len(steps) < 1000
