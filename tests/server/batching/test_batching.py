"""DynamicBatcher policy: batch formation, queue delay, FIFO routing, queue bound, instances."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from server.batching.batcher import (
    DynamicBatcher,
    QueueFullError,
    RequestTooLargeError,
)
from tests.kit.batcher_kit import (
    WIDTH,
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
        out = await asyncio.wait_for(submit(b, rows(7)), 15)
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
            await submit(b, rows(1, 9))
        assert isinstance(e.value, ValueError)
        with pytest.raises(ValueError, match="leading batch dimension"):
            await submit(b, np.zeros((0, WIDTH), np.float32))
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
            await submit(b, rows(9, 2))
        tasks.update(submit_all(b, {3: 1}))
        await queued(b, 4)
        with pytest.raises(QueueFullError, match=r"4 rows waiting, limit 4"):
            await submit(b, rows(10))
        assert b.stats().rejected_queue_full == 2
        model.gate.set()
        await first
        for i, t in tasks.items():
            out = await t
            np.testing.assert_array_equal(out, expected(rows(i, len(out))))
        assert not model.seen(9) and not model.seen(10)
        await b.stop()

    run(main())


def test_requests_of_different_shapes_go_to_different_batches() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=8)
        first = await occupy(b, model)
        wide = np.full((1, WIDTH + 2), 500, np.float32)
        tasks = [asyncio.create_task(submit(b, x)) for x in (rows(1), wide, rows(2))]
        await queued(b, 3)
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
        for x, out in zip((rows(1), wide, rows(2)), results[1:], strict=True):
            np.testing.assert_array_equal(out, expected(x))
        assert model.sizes == [1, 1, 1, 1]  # FIFO: the odd one out splits the queue
        await b.stop()

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
        results = await asyncio.gather(submit(b, rows(1)), submit(b, rows(2)))
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
        b = await started(model, max_batch_size=8, dynamic_batching=False)
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


def test_next_batch_starts_without_the_event_loop() -> None:
    """A free instance forms its next batch itself: a busy event loop does not idle it."""

    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=4)
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 1, 2: 1})
        await queued(b, 2)
        model.gate.set()
        give_up = time.monotonic() + 20
        while len(model.batches) < 2 and time.monotonic() < give_up:
            time.sleep(0.01)  # blocks the event loop on purpose: it never runs meanwhile
        assert model.sizes == [1, 2]
        await asyncio.gather(first, *tasks.values())
        await b.stop()

    run(main())


def test_one_owner_holds_at_most_its_share_and_others_still_get_in() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=2, max_queue_size=8, max_queue_share=0.5)
        first = await occupy(b, model)
        mine = [b.submit_future(rows(i), owner="a") for i in (1, 2, 3, 4)]  # 4 = its share
        with pytest.raises(QueueFullError, match=r"full for this client: it holds 4 rows"):
            b.submit_future(rows(5), owner="a")
        theirs = [b.submit_future(rows(i, 2), owner="b") for i in (6, 7)]
        mine[0].cancel()  # a withdrawn request gives its row back to its owner
        mine.append(b.submit_future(rows(8), owner="a"))
        model.gate.set()
        await first
        for future in [*mine[1:], *theirs]:
            await asyncio.wrap_future(future)
        assert b.stats().queue_rows == 0 and b._shares._rows == {}
        await b.stop()

    run(main())


def test_feature_maps_are_computed_only_for_batches_that_ask() -> None:
    async def main() -> None:
        model = Model(hold=True)
        with_maps: list[int] = []

        def run_features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with_maps.append(len(x))
            return expected(x), x[:, :, None] * 10

        b = DynamicBatcher(model, batching(max_batch_size=8), name="m", run_features=run_features)
        b.start()
        first = await occupy(b, model)  # a plain request: run_batch, no feature map
        plain = asyncio.wrap_future(b.submit_future(rows(1)))
        cam = asyncio.wrap_future(b.submit_future(rows(2, 2), features=True))
        await queued(b, 3)
        model.gate.set()
        await first
        np.testing.assert_array_equal(await plain, expected(rows(1)))
        logits, maps = await cam
        np.testing.assert_array_equal(logits, expected(rows(2, 2)))
        np.testing.assert_array_equal(maps, rows(2, 2)[:, :, None] * 10)
        assert model.sizes == [1] and with_maps == [3]  # one pass for the mixed batch
        await b.stop()
        plain_only = await started(Model())
        with pytest.raises(ValueError, match="no feature map"):
            plain_only.submit_future(rows(3), features=True)
        await plain_only.stop()

    run(main())


def test_submits_of_one_loop_pass_wake_the_worker_once_and_share_its_batch() -> None:
    """A caller with several requests in flight (``crowd``) wakes a sleeping worker after
    the loop's pass, not at each submit: requests queued in one pass are one batch."""

    async def main() -> None:
        model = Model()
        b = await started(model, max_batch_size=4)
        await until(lambda: b._sleeping == 1, "the idle worker to sleep")
        waiters = []
        for i in (1, 2, 3):
            waiters.append(b.submit(rows(i), crowd=True))
            # The GIL released for a while, the loop's pass not over: a worker woken by the
            # submit itself (as before) would take the first request alone meanwhile.
            threading.Event().wait(0.02)
        results = [await w for w in waiters]
        for i, out in zip((1, 2, 3), results, strict=True):
            np.testing.assert_array_equal(out, expected(rows(i)))
        assert model.sizes == [3] and b.stats().execution_count == 1
        await b.stop()

    run(main())
