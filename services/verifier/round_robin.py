"""A thread pool that serves batches in turn, one task of each, so no caller can starve another.

A FIFO pool runs a batch's tasks in submission order: one caller's batch of slow checks, sent
first, holds every thread until it is done, and a caller behind it waits for all of it. Here
each batch (one REST request, one rollout group) has its own queue, and the threads take the
next task from the next batch in rotation: a batch waits for at most one task of each batch
ahead of it per thread, however large those batches are.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from concurrent.futures import Future
from typing import Any, Callable


class RoundRobinPool:
    def __init__(self, threads: int, name: str = "rr") -> None:
        self._queues: OrderedDict[object, deque] = OrderedDict()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, threads))]
        for t in self._threads:
            t.start()

    def submit_batch(self, fn: Callable[..., Any], calls: list[tuple]) -> list[Future]:
        """``fn(*args)`` for each args tuple, queued as one batch; a future per call."""
        futures = [Future() for _ in calls]
        if not calls:
            return futures
        with self._cv:
            if self._closed:
                raise RuntimeError("pool closed")
            self._queues[object()] = deque(zip(futures, [fn] * len(calls), calls))
            self._cv.notify_all()
        return futures

    def map(self, fn: Callable[..., Any], calls: list[tuple]) -> list[Any]:
        """``submit_batch``'s results, in order (an exception raises)."""
        return [f.result() for f in self.submit_batch(fn, calls)]

    def _next(self):
        with self._cv:
            while not self._queues and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            key, queue = next(iter(self._queues.items()))
            task = queue.popleft()
            if queue:
                self._queues.move_to_end(key)  # its next task waits for the other batches' turn
            else:
                del self._queues[key]
            return task

    def _serve(self) -> None:
        while (task := self._next()) is not None:
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller
                future.set_exception(exc)

    def shutdown(self) -> None:
        with self._cv:
            self._closed = True
            for queue in self._queues.values():
                for future, _, _ in queue:
                    future.cancel()
            self._queues.clear()
            self._cv.notify_all()
