import random
import re

from services.trainer.task import AdditionTask
from services.verifier.extract import last_boxed


def test_problems_are_a_pure_function_of_seed_and_index():
    a, b = AdditionTask(seed=7), AdditionTask(seed=7)
    assert [a.problem(i) for i in range(20)] == [b.problem(i) for i in range(20)]
    assert a.problem(0) != AdditionTask(seed=8).problem(0)


def test_operands_have_the_configured_digits():
    t = AdditionTask(digits=3, operands=3)
    for i in range(50):
        assert all(100 <= x <= 999 for x in t.problem(i).operands)
        assert len(t.problem(i).operands) == 3


def test_cot_ends_in_the_right_boxed_answer_and_its_checks_hold():
    t = AdditionTask(digits=2)
    rng = random.Random(0)
    saw_error_trace = False
    for i in range(200):
        p = t.problem(i)
        cot = t.cot(p, rng, p_error=0.5)
        assert last_boxed(cot) == str(p.answer)
        # every "try X:X-rest=Y ok|no" check is true arithmetic, and says ok only for the answer
        for m in re.finditer(r"try (\d+):\d+-([\d+]+)=(-?\d+) (ok|no)", cot):
            guess, rest, value, verdict = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            assert guess - sum(int(x) for x in rest.split("+")) == value
            assert (verdict == "ok") == (guess == p.answer)
            saw_error_trace |= verdict == "no"
    assert saw_error_trace
