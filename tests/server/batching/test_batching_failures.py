"""DynamicBatcher failures and lifecycle: batch errors, deadlines, cancellation, stop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from server.batching.batcher import (
    BatcherClosedError,
    BatchSizeMismatchError,
    DeadlineExceededError,
    DynamicBatcher,
)
from tests.kit.batcher_kit import (
    Model,
    batching,
    expected,
    occupy,
    queued,
    rows,
    run,
    started,
    submit,
    submit_all,
    until,
)


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
        np.testing.assert_array_equal(await submit(b, rows(5)), expected(rows(5)))
        await b.stop()

    run(main())


def test_wrong_row_count_fails_the_batch_with_a_mismatch_error() -> None:
    def drop_a_row(x: np.ndarray) -> np.ndarray:
        return expected(x)[:-1] if len(x) > 1 else expected(x)

    async def main() -> None:
        b = await started(drop_a_row, max_batch_size=4)
        with pytest.raises(BatchSizeMismatchError, match=r"returned 2 rows .* batch of 3 rows"):
            await submit(b, rows(1, 3))
        np.testing.assert_array_equal(await submit(b, rows(2)), expected(rows(2)))
        assert b.stats().failure_count == 1
        await b.stop()

    run(main())


def test_expired_deadline_is_never_computed() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=4)
        with pytest.raises(DeadlineExceededError, match="not computed"):
            await submit(b, rows(8), deadline=time.monotonic() - 1)
        first = await occupy(b, model)
        late = asyncio.create_task(submit(b, rows(1), deadline=time.monotonic() + 0.05))
        on_time = asyncio.create_task(submit(b, rows(2), deadline=time.monotonic() + 600))
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


def test_cancel_after_dispatch_discards_only_that_result() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=4)
        first = await occupy(b, model)  # dispatched: computing, held on the gate
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        model.gate.set()
        np.testing.assert_array_equal(await submit(b, rows(2)), expected(rows(2)))
        assert model.seen(0)  # too late to skip it: computed, its result discarded
        s = b.stats()  # computed rows count as successes even when the caller left
        assert (s.dropped_cancelled, s.success_count, s.failure_count) == (0, 2, 0)
        assert (s.execution_count, s.inference_count, s.in_flight) == (2, 2, 0)
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
            await submit(b, rows(9))
        model.gate.set()
        await asyncio.wait_for(stopping, 15)  # the lone last request does not wait the delay
        await first
        for i, t in tasks.items():
            assert t.done()
            np.testing.assert_array_equal(t.result(), expected(rows(i)))
        assert model.sizes == [1, 2, 1]
        with pytest.raises(BatcherClosedError):
            await submit(b, rows(10))

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
        b = DynamicBatcher(expected, batching(max_batch_size=8), name="m")
        assert not b.accepting
        with pytest.raises(BatcherClosedError, match="'m' is not accepting"):
            await submit(b, rows(1))

    run(main())


def test_observer_sees_every_batch() -> None:
    calls: list[tuple[int, list[float], float]] = []

    class Observer:
        def on_batch(self, batch_size: int, queue_seconds: list[float], compute: float) -> None:
            calls.append((batch_size, queue_seconds, compute))

    async def main() -> None:
        model = Model(hold=True)
        b = DynamicBatcher(model, batching(max_batch_size=4), name="m", observer=Observer())
        b.start()
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 2, 2: 1})
        await queued(b, 3)
        model.gate.set()
        await asyncio.gather(first, *tasks.values())
        await b.stop()

    run(main())
    assert [(size, len(q)) for size, q, _ in calls] == [(1, 1), (3, 2)]
    assert all(s >= 0 for _, q, c in calls for s in [*q, c])


def test_threads_submit_and_cancel_without_an_event_loop() -> None:
    """submit_future serves callers on plain threads; a cancelled queued one never runs."""
    model = Model(hold=True)
    b = DynamicBatcher(model, batching(max_batch_size=4), name="m")
    b.start()
    first = b.submit_future(rows(0))
    give_up = time.monotonic() + 20
    while not model.batches and time.monotonic() < give_up:
        time.sleep(0.005)
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = b.submit_future(rows(i)).result(timeout=20)

    threads = [threading.Thread(target=call, args=(i,)) for i in (1, 2, 3)]
    for t in threads:
        t.start()
    doomed = b.submit_future(rows(9))
    while b.stats().queue_rows < 4 and time.monotonic() < give_up:
        time.sleep(0.005)
    assert doomed.cancel()  # still queued: withdrawn
    model.gate.set()
    for t in threads:
        t.join(20)
    np.testing.assert_array_equal(first.result(timeout=20), expected(rows(0)))
    for i in (1, 2, 3):
        np.testing.assert_array_equal(results[i], expected(rows(i)))
    assert not model.seen(9) and model.sizes == [1, 3]
    b.close()
    s = b.stats()
    assert (s.dropped_cancelled, s.success_count, s.queue_rows) == (1, 4, 0)
    with pytest.raises(BatcherClosedError):
        b.submit_future(rows(5))
