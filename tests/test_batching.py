"""DynamicBatcher: batch formation, routing, failures, deadlines, cancellation, lifecycle.

States are forced with events (a run_batch held on a threading.Event keeps the
instance busy) and asserted on counts and values, never on how fast things ran.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from server.batching import (
    BatcherClosedError,
    BatchingConfig,
    BatchSizeMismatchError,
    DeadlineExceededError,
    DynamicBatcher,
    QueueFullError,
    RequestTooLargeError,
)

WIDTH = 3


def rows(ident: int, n: int = 1) -> np.ndarray:
    """n rows whose values identify the request (ident) and the row (0..n-1)."""
    return np.repeat((ident * 100 + np.arange(n, dtype=np.float32))[:, None], WIDTH, axis=1)


def expected(x: np.ndarray) -> np.ndarray:
    return x * 2 + 1


class Model:
    """A real numpy run_batch that records every batch and can be held busy."""

    def __init__(self, hold: bool = False, fail: Callable[[np.ndarray], None] | None = None):
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.fail = fail
        self.batches: list[np.ndarray] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches.append(x.copy())
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            assert self.gate.wait(20), "test never released the model"
            if self.fail is not None:
                self.fail(x)
            return expected(x)
        finally:
            with self._lock:
                self.active -= 1

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]

    def seen(self, ident: int) -> bool:
        return any(np.any(b // 100 == ident) for b in self.batches)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 25))


async def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    """Poll (yielding to the loop) until predicate holds; generous for a loaded machine."""
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def started(model: Callable[[np.ndarray], np.ndarray], **config: Any) -> DynamicBatcher:
    config.setdefault("max_batch_size", 4)
    batcher = DynamicBatcher(model, BatchingConfig(**config), name="m")
    await batcher.start()
    return batcher


async def occupy(batcher: DynamicBatcher, model: Model, ident: int = 0) -> asyncio.Task:
    """Submit one request and wait until it is computing (held on the gate)."""
    task = asyncio.create_task(batcher.submit(rows(ident)))
    await until(lambda: len(model.batches) >= 1, "the first batch to start")
    return task


def submit_all(batcher: DynamicBatcher, requests: dict[int, int]) -> dict[int, asyncio.Task]:
    return {i: asyncio.create_task(batcher.submit(rows(i, n))) for i, n in requests.items()}


async def queued(batcher: DynamicBatcher, n_rows: int) -> None:
    await until(lambda: batcher.stats().queue_rows == n_rows, f"{n_rows} queued rows")


def test_full_batches_form_while_instance_is_busy() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=4)
        first = await occupy(b, model)
        tasks = submit_all(b, {i: 1 for i in range(1, 9)})
        await queued(b, 8)
        model.gate.set()
        results = {i: await t for i, t in tasks.items()}
        np.testing.assert_array_equal(await first, expected(rows(0)))
        for i, out in results.items():
            np.testing.assert_array_equal(out, expected(rows(i)))
        assert model.sizes == [1, 4, 4]
        s = b.stats()
        assert (s.execution_count, s.inference_count, s.success_count) == (3, 9, 9)
        assert s.execution_count < s.inference_count
        assert s.batch_sizes.keys() == {1, 4} and s.batch_sizes[4][0] == 2
        assert s.queue_rows == 0 and s.in_flight == 0 and s.compute_ns > 0
        await b.stop()

    run(main())


def test_idle_instance_dispatches_at_once_despite_long_delay() -> None:
    async def main() -> None:
        model = Model()
        b = await started(model, preferred_batch_sizes=(4,), max_queue_delay_us=60_000_000)
        out = await asyncio.wait_for(b.submit(rows(7)), 15)
        np.testing.assert_array_equal(out, expected(rows(7)))
        assert model.sizes == [1]
        await b.stop()

    run(main())


def test_partial_batch_runs_after_the_queue_delay() -> None:
    async def main() -> None:
        model = Model(hold=True)
        delay_s = 0.3
        b = await started(
            model, max_batch_size=8, preferred_batch_sizes=(8,), max_queue_delay_us=300_000
        )
        first = await occupy(b, model)
        t0 = time.monotonic()
        tasks = submit_all(b, {1: 1, 2: 1, 3: 1})
        await queued(b, 3)
        model.gate.set()
        for i, t in tasks.items():
            np.testing.assert_array_equal(await t, expected(rows(i)))
        assert time.monotonic() - t0 >= delay_s  # held back for the delay (a lower bound)
        await first
        assert model.sizes == [1, 3]
        await b.stop()

    run(main())


def test_free_instance_waits_for_preferred_size_within_the_delay() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(
            model, max_batch_size=8, preferred_batch_sizes=(2, 4), max_queue_delay_us=60_000_000
        )
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 1, 2: 2})
        await queued(b, 3)
        model.gate.set()
        await first
        await until(lambda: b.stats().in_flight == 0, "the instance to be free")
        await asyncio.sleep(0.1)
        assert model.sizes == [1]  # 3 rows < 4 preferred: still growing
        tasks.update(submit_all(b, {3: 1}))  # reaches 4: dispatched at once
        results = await asyncio.wait_for(asyncio.gather(*tasks.values()), 15)
        for i, out in zip(tasks, results, strict=True):
            np.testing.assert_array_equal(out, expected(rows(i, len(out))))
        assert model.sizes == [1, 4]
        await b.stop()

    run(main())


def test_zero_delay_dispatches_partial_batch_when_instance_frees() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=8, preferred_batch_sizes=(8,))
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 1, 2: 1})
        await queued(b, 2)
        model.gate.set()
        await asyncio.gather(first, *tasks.values())
        assert model.sizes == [1, 2]
        await b.stop()

    run(main())


def test_multi_row_requests_get_their_own_rows_in_fifo_order() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=8)
        first = await occupy(b, model)
        sizes = {1: 2, 2: 1, 3: 3, 4: 2, 5: 4}
        tasks = submit_all(b, sizes)
        await queued(b, 12)
        model.gate.set()
        await first
        for i, t in tasks.items():
            out = await t
            assert out.shape == (sizes[i], WIDTH)
            np.testing.assert_array_equal(out, expected(rows(i, sizes[i])))
        # 2+1+3+2 = 8 fill the first batch; the 4-row request waits for the next.
        assert model.sizes == [1, 8, 4]
        order = np.concatenate([rows(i, sizes[i]) for i in (1, 2, 3, 4)])
        np.testing.assert_array_equal(model.batches[1], order)
        await b.stop()

    run(main())


def test_a_request_that_does_not_fit_is_not_overtaken() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=4)
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 3, 2: 2, 3: 1})
        await queued(b, 6)
        model.gate.set()
        await asyncio.gather(first, *tasks.values())
        assert model.sizes == [1, 3, 3]  # request 3 would fit after 1 but goes with 2
        np.testing.assert_array_equal(model.batches[2], np.concatenate([rows(2, 2), rows(3)]))
        await b.stop()

    run(main())


def test_request_larger_than_max_batch_size_is_rejected() -> None:
    async def main() -> None:
        model = Model()
        b = await started(model, max_batch_size=8)
        with pytest.raises(RequestTooLargeError, match=r"9 rows exceeds max_batch_size 8") as e:
            await b.submit(rows(1, 9))
        assert isinstance(e.value, ValueError)
        with pytest.raises(ValueError, match="leading batch dimension"):
            await b.submit(np.zeros((0, WIDTH), np.float32))
        assert model.batches == []
        await b.stop()

    run(main())


def test_full_queue_rejects_at_once_and_accepted_requests_complete() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=4, max_queue_size=4)
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 1, 2: 2})
        await queued(b, 3)
        with pytest.raises(QueueFullError, match=r"'m' is full: 3 rows waiting, limit 4"):
            await b.submit(rows(9, 2))
        tasks.update(submit_all(b, {3: 1}))
        await queued(b, 4)
        with pytest.raises(QueueFullError, match=r"4 rows waiting, limit 4"):
            await b.submit(rows(10))
        assert b.stats().rejected_queue_full == 2
        model.gate.set()
        await first
        for i, t in tasks.items():
            out = await t
            np.testing.assert_array_equal(out, expected(rows(i, len(out))))
        assert not model.seen(9) and not model.seen(10)
        await b.stop()

    run(main())


def test_error_in_run_batch_fails_exactly_that_batch() -> None:
    def fail(x: np.ndarray) -> None:
        if np.any(x // 100 == 1):
            raise RuntimeError(f"boom in a batch of {len(x)}")

    async def main() -> None:
        model = Model(hold=True, fail=fail)
        b = await started(model, max_batch_size=2)
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 1, 2: 1, 3: 1, 4: 1})
        await queued(b, 4)
        model.gate.set()
        await first
        for i in (1, 2):
            with pytest.raises(RuntimeError, match="boom in a batch of 2"):
                await tasks[i]
        for i in (3, 4):
            np.testing.assert_array_equal(await tasks[i], expected(rows(i)))
        assert model.sizes == [1, 2, 2]
        s = b.stats()
        assert (s.failure_count, s.success_count, s.execution_count) == (2, 3, 2)
        np.testing.assert_array_equal(await b.submit(rows(5)), expected(rows(5)))
        await b.stop()

    run(main())


def test_wrong_row_count_fails_the_batch_with_a_mismatch_error() -> None:
    def drop_a_row(x: np.ndarray) -> np.ndarray:
        return expected(x)[:-1] if len(x) > 1 else expected(x)

    async def main() -> None:
        b = await started(drop_a_row, max_batch_size=4)
        with pytest.raises(BatchSizeMismatchError, match=r"returned 2 rows .* batch of 3 rows"):
            await b.submit(rows(1, 3))
        np.testing.assert_array_equal(await b.submit(rows(2)), expected(rows(2)))
        assert b.stats().failure_count == 1
        await b.stop()

    run(main())


def test_expired_deadline_is_never_computed() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=4)
        with pytest.raises(DeadlineExceededError, match="not computed"):
            await b.submit(rows(8), deadline=time.monotonic() - 1)
        first = await occupy(b, model)
        late = asyncio.create_task(b.submit(rows(1), deadline=time.monotonic() + 0.05))
        on_time = asyncio.create_task(b.submit(rows(2), deadline=time.monotonic() + 600))
        await queued(b, 2)
        await asyncio.sleep(0.2)  # past the first deadline (a lower bound: cannot flake)
        model.gate.set()
        await first
        with pytest.raises(DeadlineExceededError, match=r"model 'm' passed .* ms ago"):
            await late
        np.testing.assert_array_equal(await on_time, expected(rows(2)))
        assert not model.seen(1) and not model.seen(8)
        s = b.stats()
        assert (s.dropped_deadline, s.failure_count, s.queue_rows) == (2, 2, 0)
        await b.stop()

    run(main())


def test_cancelled_waiter_is_never_computed() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=4)
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 1, 2: 2, 3: 1})
        await queued(b, 4)
        tasks[2].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[2]
        assert b.stats().queue_rows == 2
        model.gate.set()
        await first
        for i in (1, 3):
            np.testing.assert_array_equal(await tasks[i], expected(rows(i)))
        assert not model.seen(2)
        assert model.sizes == [1, 2]
        s = b.stats()
        assert (s.dropped_cancelled, s.success_count, s.failure_count) == (1, 3, 0)
        await b.stop()

    run(main())


def test_cancel_in_the_same_tick_as_batch_formation_is_not_computed() -> None:
    async def main() -> None:
        model = Model()
        b = await started(model, max_batch_size=4)
        doomed = asyncio.create_task(b.submit(rows(1)))
        await asyncio.sleep(0)  # queued; the scheduler is woken but has not run yet
        doomed.cancel()
        np.testing.assert_array_equal(await b.submit(rows(2)), expected(rows(2)))
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert not model.seen(1)
        s = b.stats()
        assert (s.dropped_cancelled, s.queue_rows, s.success_count) == (1, 0, 1)
        await b.stop()

    run(main())


def test_requests_of_different_shapes_go_to_different_batches() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=8)
        first = await occupy(b, model)
        wide = np.full((1, WIDTH + 2), 500, np.float32)
        tasks = [asyncio.create_task(b.submit(x)) for x in (rows(1), wide, rows(2))]
        await queued(b, 3)
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
        for x, out in zip((rows(1), wide, rows(2)), results[1:], strict=True):
            np.testing.assert_array_equal(out, expected(x))
        assert model.sizes == [1, 1, 1, 1]  # FIFO: the odd one out splits the queue
        await b.stop()

    run(main())


def test_stop_drains_accepted_requests_and_rejects_new_ones() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(
            model, max_batch_size=2, preferred_batch_sizes=(2,), max_queue_delay_us=60_000_000
        )
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 1, 2: 1, 3: 1})
        await queued(b, 3)
        stopping = asyncio.create_task(b.stop(drain=True))
        await until(lambda: not b.accepting, "stop to begin")
        with pytest.raises(BatcherClosedError, match="not accepting"):
            await b.submit(rows(9))
        model.gate.set()
        await asyncio.wait_for(stopping, 15)  # the lone last request does not wait the delay
        await first
        for i, t in tasks.items():
            assert t.done()
            np.testing.assert_array_equal(t.result(), expected(rows(i)))
        assert model.sizes == [1, 2, 1]
        with pytest.raises(BatcherClosedError):
            await b.submit(rows(10))

    run(main())


def test_stop_without_drain_fails_queued_requests() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=4)
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 1, 2: 1})
        await queued(b, 2)
        stopping = asyncio.create_task(b.stop(drain=False))
        await until(lambda: not b.accepting, "stop to begin")
        model.gate.set()
        await stopping
        np.testing.assert_array_equal(await first, expected(rows(0)))  # in flight: finished
        for t in tasks.values():
            with pytest.raises(BatcherClosedError, match="stopped before batching"):
                await t
        assert model.sizes == [1]

    run(main())


def test_submit_before_start_is_refused() -> None:
    async def main() -> None:
        b = DynamicBatcher(expected, BatchingConfig(), name="m")
        assert not b.accepting
        with pytest.raises(BatcherClosedError, match="'m' is not accepting"):
            await b.submit(rows(1))

    run(main())


def test_two_instances_run_two_batches_at_once() -> None:
    barrier = threading.Barrier(2, timeout=20)

    class Meeting(Model):
        def __call__(self, x: np.ndarray) -> np.ndarray:
            out = super().__call__(x)
            barrier.wait()  # only passes if another batch is running concurrently
            return out

    async def main() -> None:
        model = Meeting()
        b = await started(model, max_batch_size=1, instance_count=2)
        results = await asyncio.gather(b.submit(rows(1)), b.submit(rows(2)))
        for i, out in zip((1, 2), results, strict=True):
            np.testing.assert_array_equal(out, expected(rows(i)))
        assert model.sizes == [1, 1]
        assert b.stats().execution_count == 2
        await b.stop()

    run(main())


def test_two_instances_overlap_execution() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=1, instance_count=2)
        tasks = submit_all(b, {1: 1, 2: 1, 3: 1})
        await until(lambda: model.active == 2, "two batches computing at once")
        assert b.stats().in_flight == 2 and b.stats().queue_rows == 1
        model.gate.set()
        await asyncio.gather(*tasks.values())
        assert model.max_active == 2 and model.sizes == [1, 1, 1]
        await b.stop()

    run(main())


def test_disabled_batching_runs_each_request_alone() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=8, enabled=False)
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 1, 2: 2, 3: 1})
        await queued(b, 4)
        model.gate.set()
        await first
        for i, t in tasks.items():
            out = await t
            np.testing.assert_array_equal(out, expected(rows(i, len(out))))
        assert model.sizes == [1, 1, 2, 1]
        await b.stop()

    run(main())


def test_observer_sees_every_batch() -> None:
    calls: list[tuple[int, list[float], float]] = []

    class Observer:
        def on_batch(self, batch_size: int, queue_seconds: list[float], compute: float) -> None:
            calls.append((batch_size, queue_seconds, compute))

    async def main() -> None:
        model = Model(hold=True)
        b = DynamicBatcher(model, BatchingConfig(max_batch_size=4), name="m", observer=Observer())
        await b.start()
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 2, 2: 1})
        await queued(b, 3)
        model.gate.set()
        await asyncio.gather(first, *tasks.values())
        await b.stop()

    run(main())
    assert [(size, len(q)) for size, q, _ in calls] == [(1, 1), (3, 2)]
    assert all(s >= 0 for _, q, c in calls for s in [*q, c])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1, got 0"),
        ({"max_batch_size": 4, "preferred_batch_sizes": (2, 5)}, "5 must be in 1..4"),
        ({"preferred_batch_sizes": (0,)}, "0 must be in 1..8"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us must be >= 0, got -1"),
        ({"max_queue_size": 0}, "max_queue_size must be >= 1 row, got 0"),
        ({"instance_count": 0}, "instance_count must be >= 1, got 0"),
    ],
)
def test_config_validation_names_the_bad_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchingConfig(**kwargs)
