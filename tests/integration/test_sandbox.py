"""The sandbox pool: hard wall-clock kill, replacement, limits, use from many threads."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from services.verifier.sandbox import SandboxPool


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, timeout_s=2.0, memory_mb=1024) as p:
        yield p


def test_equivalence_runs_in_the_sandbox(pool):
    assert pool.run("sympy_equivalent", "\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2").value is True
    assert pool.run("sympy_equivalent", "x=3", "3").value is True
    assert pool.run("sympy_equivalent", "x+1", "x+2").value is False


def test_a_hanging_check_is_killed_and_the_worker_replaced(pool):
    before = pool.replaced
    res = pool.run("sympy_equivalent", "9^{9^{9^{9^{9}}}}", "1")
    assert res.status == "timeout"
    assert pool.replaced == before + 1
    # the pool still answers afterwards, with both workers
    assert pool.run("sympy_equivalent", "2", "\\frac{4}{2}").value is True


def test_unknown_function_is_an_error_not_a_crash(pool):
    res = pool.run("no_such_fn")
    assert res.status == "error"


def test_concurrent_callers_share_the_pool(pool):
    pairs = [("\\frac{1}{%d}" % n, "1/%d" % n) for n in range(1, 9)]
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda p: pool.run("sympy_equivalent", *p), pairs))
    assert all(r.status == "ok" and r.value is True for r in results)


def test_the_cpu_budget_always_outlasts_the_wall_deadline():
    # A fractional deadline used to round the CPU budget down, so a busy check could hit the
    # CPU rlimit first and come back as a dead worker ("error") instead of a timeout.
    with SandboxPool(workers=1, timeout_s=1.5) as pool:
        assert pool.cpu_s >= 1.5 + 1
        for _ in range(2):  # the second check runs on a worker that has already used CPU
            assert pool.run("sympy_equivalent", "9^{9^{9^{9^{9}}}}", "1").status == "timeout"


def test_a_check_killed_by_its_cpu_budget_counts_as_a_timeout():
    with SandboxPool(workers=1, timeout_s=0.5) as pool:  # CPU budget: 2 s
        res = pool.run("sympy_equivalent", "9^{9^{9^{9^{9}}}}", "1", timeout_s=30)
        assert res.status == "timeout" and "CPU budget" in res.error
        # replaced; a fresh worker's first parse is slow, hence the generous deadline
        assert pool.run("sympy_equivalent", "2", "\\frac{4}{2}", timeout_s=30).value is True
