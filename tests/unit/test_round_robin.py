"""Batches served in turn: a small batch behind a large one is not made to wait for all of it."""

import threading

import pytest

from services.verifier.round_robin import RoundRobinPool


def test_a_later_batch_gets_its_turn_before_an_earlier_batch_is_done():
    pool = RoundRobinPool(1)
    started, gate, order = threading.Event(), threading.Event(), []

    def task(name):
        if name == "a0":
            started.set()
            gate.wait(5)  # holds the only thread while the second batch queues up
        order.append(name)
        return name

    big = pool.submit_batch(task, [(f"a{i}",) for i in range(4)])
    assert started.wait(5)
    small = pool.submit_batch(task, [("b0",), ("b1",)])
    gate.set()
    assert [f.result(5) for f in small] == ["b0", "b1"] and [f.result(5) for f in big][-1] == "a3"
    assert order == ["a0", "a1", "b0", "a2", "b1", "a3"]  # in turn, not a0..a3 first
    pool.shutdown()


def test_results_in_order_and_errors_reach_the_caller():
    pool = RoundRobinPool(3)
    assert pool.map(lambda x: x * x, [(i,) for i in range(20)]) == [i * i for i in range(20)]
    with pytest.raises(ZeroDivisionError):
        pool.map(lambda x: 1 / x, [(1,), (0,)])
    assert pool.map(len, []) == []
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.map(len, [("x",)])
