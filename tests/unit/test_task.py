import random
import re
from collections import Counter
from fractions import Fraction

import pytest
from pydantic import ValidationError

from services.common.config import TaskConfig, VerifierConfig, load_config
from services.data.tasks import AdditionTask, FractionsTask, LinearTask, make_task
from services.verifier.extract import last_boxed

NEW_FAMILIES = ("fractions", "linear")
# The non-addition traces need a larger generation budget than the tiny preset's 80 tokens,
# which is sized for addition (docs/tasks.md): run them with generator.max_tokens=128.
MAX_TRACE_TOKENS = 128


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


def test_addition_is_unchanged():
    # Recorded from the implementation before the task family existed: runs and tests depend on it.
    for task in (AdditionTask(2, 2, 1234), make_task(TaskConfig())):
        assert [task.problem(i).prompt for i in range(3)] == ["Q:51+57\nA:", "Q:61+13\nA:", "Q:99+52\nA:"]
        rng = random.Random(0)
        assert [task.cot(task.problem(i), rng) for i in range(4)] == [
            "1+7=8;5+5=10 try 108:108-57=51 ok \\boxed{108}",
            "1+3=4;6+1=7 try 74:74-13=61 ok \\boxed{74}",
            "9+2=11;9+5+1=15 try 151:151-52=99 ok \\boxed{151}",
            "1+6=7;3+9=12 try 27:27-96=-69 no try 127:127-96=31 ok \\boxed{127}"]
    heldout = make_task(TaskConfig(digits=1), split="heldout")
    assert [heldout.problem(i).prompt for i in range(3)] == ["Q:1+6\nA:", "Q:8+5\nA:", "Q:1+5\nA:"]


@pytest.mark.parametrize("name", [*NEW_FAMILIES, "mix"])
def test_new_tasks_are_a_pure_function_of_seed_and_index(name):
    a, b = make_task(TaskConfig(name=name, seed=7)), make_task(TaskConfig(name=name, seed=7))
    assert [a.problem(i) for i in range(50)] == [b.problem(i) for i in range(50)]
    other = make_task(TaskConfig(name=name, seed=8))
    assert [a.problem(i) for i in range(50)] != [other.problem(i) for i in range(50)]


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_heldout_problems_are_never_training_problems(name):
    cfg = TaskConfig(name=name)
    train, heldout = make_task(cfg), make_task(cfg, split="heldout")
    # RL reads indices from 0, SFT from 10**9 (services/trainer/sft.py)
    seen = {train.problem(i).prompt for i in [*range(3000), *range(10**9, 10**9 + 3000)]}
    held = {heldout.problem(i).prompt for i in range(1000)}
    assert len(held) > 150  # a real split, not a handful of problems
    assert not seen & held
    # the split is by problem, not by seed: another training seed stays off the held-out set too
    assert not {make_task(cfg.model_copy(update={"seed": 5})).problem(i).prompt for i in range(3000)} & held


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_validation_problems_are_neither_training_nor_heldout_problems(name):
    from services.common.config import T1Config
    from services.evaluation import heldout_problems, validation_problems

    cfg = T1Config(task=TaskConfig(name=name))
    train = make_task(cfg.task)
    seen = {train.problem(i).prompt for i in [*range(3000), *range(10**9, 10**9 + 3000)]}
    held = {p.prompt for p in heldout_problems(cfg, 1000)}
    val = {p.prompt for p in validation_problems(cfg, 1000)}
    assert len(val) > 150
    assert not val & seen and not val & held


def test_fraction_and_linear_problems_respect_their_ranges():
    for i in range(300):
        f = FractionsTask(max_den=5).problem(i)
        assert 2 <= f.b <= 5 and 2 <= f.d <= 5 and 0 < f.a < f.b and 0 < f.c < f.d
        lin = LinearTask(max_coef=4, max_value=3, two_sided=0.5).problem(i)
        assert 2 <= lin.a <= 4 and abs(lin.x) <= 3 and 1 <= abs(lin.b) <= 3 and 0 <= lin.c < lin.a
        assert lin.a * lin.x + lin.b == lin.c * lin.x + lin.d


def test_fraction_gold_is_reduced_latex():
    answers = {FractionsTask().problem(i).answer for i in range(2000)}
    assert {"\\frac{5}{6}", "-\\frac{1}{6}", "1", "0"} <= answers
    for a in answers:
        assert re.fullmatch(r"-?\d+|-?\\frac\{\d+\}\{\d+\}", a)
    f = next(p for p in map(FractionsTask().problem, range(100)) if p.value.denominator > 1)
    num, den = map(int, re.findall(r"\d+", f.answer))
    assert Fraction(num, den).denominator == den


@pytest.fixture(scope="module")
def scorer():
    from services.verifier.scoring import Scorer

    sc = Scorer(VerifierConfig(workers=1))
    yield sc
    sc.close()


@pytest.mark.parametrize("name", [*NEW_FAMILIES, "mix"])
def test_every_trace_ends_in_the_boxed_gold_that_the_verifier_accepts(name, scorer):
    task = make_task(TaskConfig(name=name))
    rng = random.Random(0)
    problems = [task.problem(i) for i in range(150)]
    traces = [task.cot(p, rng, p_error=0.5) for p in problems]
    for p, cot in zip(problems, traces):
        assert cot.endswith(f"\\boxed{{{p.answer}}}")
    verdicts = scorer.score_batch([(cot, str(p.answer), "math") for p, cot in zip(problems, traces)])
    assert all(v.reward == 1.0 for v in verdicts)


@pytest.mark.parametrize("answer,gold", [
    ("\\frac{3}{4}", "\\frac{3}{4}"), ("3/4", "\\frac{3}{4}"), ("0.75", "\\frac{3}{4}"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}"), ("-5/4", "-\\frac{5}{4}"), ("\\frac{-5}{4}", "-\\frac{5}{4}"),
    ("-1.25", "-\\frac{5}{4}"), ("x=-3", "-3"), ("x = 5", "5"),
])
def test_the_verifier_accepts_natural_forms_of_the_golds(answer, gold, scorer):
    assert scorer.score(f"so \\boxed{{{answer}}}", gold).correct


def _fraction_checks_hold(cot: str) -> bool:
    """The check recomputes a/b op c/d by cross-multiplying; returns whether it failed first."""
    m = re.match(r"(-?\d+)/(\d+)([+-])(\d+)/\2=(-?\d+)/\2", cot)
    num_a, lcd, op, num_c, first = int(m[1]), int(m[2]), m[3], int(m[4]), int(m[5])
    check = re.search(r"check \((\d+)\*(\d+)([+-])(\d+)\*(\d+)\)/(\d+)=(-?\d+)/\6(?:=(-?[\d/]+))? "
                      r"(ok|not (-?\d+)/(\d+) no)", cot)
    a, d, c, b, bd, cross = (int(check[i]) for i in (1, 2, 4, 5, 6, 7))
    assert check[3] == op and bd == b * d
    assert cross == (a * d + c * b if op == "+" else a * d - c * b)
    truth = Fraction(cross, bd)
    if check[8]:
        assert Fraction(check[8]) == truth
    assert Fraction(num_a, lcd) == Fraction(a, b) and Fraction(num_c, lcd) == Fraction(c, d)
    assert (check[9] == "ok") == (Fraction(first, lcd) == truth)
    if check[9] != "ok":  # a wrong first attempt: the named mismatch, then a corrected sum
        assert int(check[10]) == first
        fix = re.search(r"no; (-?\d+)([+-])(\d+)=(-?\d+) ok", cot)
        assert Fraction(int(fix[4]), lcd) == truth
    return check[9] != "ok"


def _linear_checks_hold(cot: str, a: int, b: int, c: int, d: int, x: int) -> bool:
    """Every attempt substitutes its x back into the equation; returns whether one failed first."""
    attempts = re.findall(r"x=(-?\d+)/(\d+)=(-?\d+) check ([^;\\]*?) (ok|no)", cot)
    assert attempts and int(attempts[-1][2]) == x and attempts[-1][4] == "ok"
    for _, _, guess, sides, verdict in attempts:
        g = int(guess)
        values = [int(v) for v in re.findall(r"=(-?\d+)", sides)]
        assert values[0] == a * g + b
        if c:
            assert values[1] == c * g + d
        assert (verdict == "ok") == (g == x)
    return len(attempts) > 1


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_checks_are_true_arithmetic_and_wrong_first_traces_correct_themselves(name):
    task = make_task(TaskConfig(name=name))
    rng = random.Random(1)
    failed = 0
    for i in range(300):
        p = task.problem(i)
        cot = task.cot(p, rng, p_error=0.5)
        if name == "fractions":
            fail = _fraction_checks_hold(cot)
        else:
            fail = _linear_checks_hold(cot, p.a, p.b, p.c, p.d, p.x)
        assert fail == (" no; " in cot)
        failed += fail
    assert 100 < failed < 200  # p_error=0.5 of 300


@pytest.mark.parametrize("name", ["addition", *NEW_FAMILIES])
def test_wrong_first_share_comes_from_the_config(name):
    def errors(share: float) -> int:
        task = make_task(TaskConfig(name=name, wrong_first_share=share))
        rng = random.Random(0)
        return sum(" no" in task.cot(task.problem(i), rng) for i in range(400))
    assert errors(0.0) == 0
    assert 60 < errors(0.3) < 180 and errors(1.0) > 300  # addition skips a wrong guess below 0


@pytest.mark.parametrize("name", ["addition", *NEW_FAMILIES, "mix"])
def test_traces_fit_the_tiny_model(name):
    from services.trainer.tiny_model import build_tokenizer

    tok = build_tokenizer()
    tiny = load_config("tiny", environ={})
    budget = tiny.generator.max_tokens if name == "addition" else MAX_TRACE_TOKENS
    task = make_task(TaskConfig(name=name))
    rng = random.Random(0)
    for i in range(1000):
        p = task.problem(i)
        cot = task.cot(p, rng, p_error=1.0)  # wrong-first traces are the longest
        response = len(tok(cot, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        assert response <= budget
        assert len(tok(p.prompt, add_special_tokens=False)["input_ids"]) + response <= tiny.model.max_position


def test_mix_follows_its_weights():
    weights = {"addition": 1.0, "fractions": 2.0, "linear": 5.0}
    task = make_task(TaskConfig(name="mix", mix_weights=weights))
    counts = Counter(task.problem(i).family for i in range(1000))
    for name, w in weights.items():
        assert abs(counts[name] / 1000 - w / 8) < 0.05
    only = make_task(TaskConfig(name="mix", mix_weights={"linear": 1.0, "fractions": 0.0}))
    assert {only.problem(i).family for i in range(200)} == {"linear"}


def test_bad_task_configs_are_rejected():
    with pytest.raises(ValidationError):
        TaskConfig(name="geometry")
    with pytest.raises(ValidationError):
        TaskConfig(mix_weights={"geometry": 1.0})
    with pytest.raises(ValidationError):
        TaskConfig(wrong_first_share=1.5)
    with pytest.raises(ValueError):
        make_task(TaskConfig(name="mix", mix_weights={"linear": 0.0}))
    with pytest.raises(ValueError):
        make_task(TaskConfig(name="mix", mix_weights={"linear": -1.0, "fractions": 2.0}))


_STEPWISE = re.compile(
    r"(-?\d+)x=(-?\d+)([+-]\d+)=(-?\d+) x=(-?\d+)/(-?\d+)=(-?\d+) check (.*?) vs (-?\d+) (ok|no)")


def test_stepwise_linear_checks_one_operation_at_a_time_and_read_the_verdict_off_the_text():
    """Every check step is true arithmetic on what the attempt wrote, the verdict compares the
    two numbers around ``vs``, a failed attempt is redone from the start, and only the wrong
    attempt's subtraction or division is off."""
    task = make_task(TaskConfig(name="linear", linear_check="stepwise"))
    rng = random.Random(3)
    slips = Counter()
    for i in range(400):
        p = task.problem(i)
        cot = task.cot(p, rng, p_error=0.5)
        attempts = _STEPWISE.findall(cot)
        assert len(attempts) == 1 + (" no; " in cot) and cot.endswith(f"\\boxed{{{p.x}}}")
        assert len(cot.encode()) + 1 <= 192  # byte-level tokens + EOS: fits max_tokens=192
        for n, (k, d, neg_b, rhs, rhs_again, k_again, guess, steps, target, verdict) in enumerate(attempts):
            last = n == len(attempts) - 1
            assert (int(k), int(d), -int(neg_b)) == (p.a - p.c, p.d, p.b)
            assert (rhs_again, k_again) == (rhs, k) and (verdict == "ok") == last
            sums = re.findall(r"(-?\d+)\*\(?(-?\d+)\)?=(-?\d+) (-?\d+)([+-]\d+)=(-?\d+)", steps)
            assert len(sums) == (2 if p.c else 1)
            for coef, g, product, product_again, const, total in sums:
                assert int(g) == int(guess) and int(coef) * int(g) == int(product) == int(product_again)
                assert int(product) + int(const) == int(total)
            left = int(sums[0][5])
            right = int(sums[1][5]) if p.c else p.d
            if p.c:
                assert steps.endswith(f" {left}")
            assert int(target) == right and (left == right) == (verdict == "ok")
            if last:
                assert int(rhs) == p.d - p.b and int(guess) == p.x
            elif int(rhs) != p.d - p.b:
                slips["subtraction"] += 1
                assert int(rhs) == p.d - p.b + (int(guess) - p.x) * int(k)  # still divisible
            else:
                slips["division"] += 1
                assert 1 <= abs(int(guess) - p.x) <= 2
    assert slips["subtraction"] > 40 and slips["division"] > 40


def test_the_linear_check_style_leaves_the_problems_and_the_compact_traces_alone():
    compact, default = (make_task(TaskConfig(name="linear", **kw)) for kw in ({"linear_check": "compact"}, {}))
    stepwise = make_task(TaskConfig(name="linear", linear_check="stepwise"))
    for i in range(50):
        assert compact.problem(i) == stepwise.problem(i)
        assert compact.cot(compact.problem(i), random.Random(i)) == default.cot(default.problem(i), random.Random(i))
    with pytest.raises(ValidationError):
        TaskConfig(linear_check="loose")
    with pytest.raises(ValueError):
        LinearTask(check="loose")  # type: ignore[arg-type]
    assert "vs" not in default.cot(default.problem(0), random.Random(0), p_error=1.0)


def test_compare_linear_checks_write_both_numbers_before_the_verdict():
    task = make_task(TaskConfig(name="linear", linear_check="compare"))
    rng = random.Random(5)
    for i in range(300):
        p = task.problem(i)
        cot = task.cot(p, rng, p_error=0.5)
        assert _linear_checks_hold(cot, p.a, p.b, p.c, p.d, p.x) == (" no; " in cot)
        for left, right, verdict in re.findall(r" (-?\d+) vs (-?\d+) (ok|no)", cot):
            assert (left == right) == (verdict == "ok")
            if not p.c:
                assert int(right) == p.d
        assert cot.count(" vs ") == cot.count(" check ")


_WORK = re.compile(r"(-?\d+)x=(-?\d+)([+-]\d+)=(-?\d+) x=(-?\d+)/(\d+)=(-?\d+) check")


def test_redo_retries_write_their_own_work_and_repair_a_slip_in_either_step():
    """linear_retry=redo: each attempt writes its subtraction, a wrong first attempt slips in the
    subtraction (kept divisible) or the division, and the checks are still true arithmetic."""
    task = make_task(TaskConfig(name="linear", linear_retry="redo"))
    rng = random.Random(4)
    slips = Counter()
    for i in range(400):
        p = task.problem(i)
        cot = task.cot(p, rng, p_error=0.5)
        failed = _linear_checks_hold(cot, p.a, p.b, p.c, p.d, p.x)
        attempts = _WORK.findall(cot)
        assert len(attempts) == 1 + failed == cot.count(" check ")
        assert len(cot.encode()) + 1 <= 144  # byte-level tokens + EOS: generator.max_tokens=144
        for k, d, neg_b, rhs, rhs_again, k_again, guess in attempts[:-1]:
            assert (int(k), int(d), -int(neg_b)) == (p.a - p.c, p.d, p.b) and (rhs, k) == (rhs_again, k_again)
            if int(rhs) != p.d - p.b:
                slips["subtraction"] += 1
                assert int(rhs) == p.d - p.b + (int(guess) - p.x) * int(k)
            else:
                slips["division"] += 1
                assert 1 <= abs(int(guess) - p.x) <= 2
        assert int(attempts[-1][3]) == p.d - p.b and int(attempts[-1][6]) == p.x
    assert slips["subtraction"] > 40 and slips["division"] > 40


@pytest.mark.parametrize("retry", ["division", "redo"])
def test_a_share_of_retries_fails_its_check_too(retry):
    task = make_task(TaskConfig(name="linear", linear_retry=retry, linear_retry_fails=0.5))
    rng = random.Random(6)
    failures = Counter()
    for i in range(400):
        p = task.problem(i)
        cot = task.cot(p, rng, p_error=1.0)
        _linear_checks_hold(cot, p.a, p.b, p.c, p.d, p.x)  # every verdict matches its arithmetic
        guesses = [int(g) for g in re.findall(r"x=-?\d+/\d+=(-?\d+) check", cot)]
        assert len(set(guesses)) == len(guesses) and guesses[-1] == p.x
        failures[cot.count(" no;")] += 1
    assert set(failures) == {1, 2} and 140 < failures[2] < 260
    with pytest.raises(ValidationError):
        TaskConfig(linear_retry_fails=1.5)
    with pytest.raises(ValidationError):
        TaskConfig(linear_retry="again")


def test_the_retry_knobs_leave_the_default_traces_alone():
    default = make_task(TaskConfig(name="linear"))
    explicit = make_task(TaskConfig(name="linear", linear_retry="division", linear_retry_fails=0.0))
    rng_a, rng_b = random.Random(2), random.Random(2)
    for i in range(200):
        assert default.cot(default.problem(i), rng_a) == explicit.cot(explicit.problem(i), rng_b)
