"""Event-loop callers (``DynamicBatcher.submit``): one wake-up of the loop per batch, and
``cancel()`` saying whether the request was still queued, as the data plane counts it."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from tests.kit.batcher_kit import Model, expected, occupy, queued, rows, run, started, submit_all


def test_a_batch_of_several_requests_wakes_the_loop_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wakeups: list[Any] = []
        plain = loop.call_soon_threadsafe

        def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
            wakeups.append(callback)
            return plain(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        model = Model(hold=True)
        b = await started(model, max_batch_size=8)
        first = await occupy(b, model)
        tasks = submit_all(b, {1: 1, 2: 2, 3: 1, 4: 3})
        await queued(b, 7)
        model.gate.set()
        np.testing.assert_array_equal(await first, expected(rows(0)))
        for i, n in {1: 1, 2: 2, 3: 1, 4: 3}.items():  # each its own rows of the one batch
            np.testing.assert_array_equal(await tasks[i], expected(rows(i, n)))
        assert model.sizes == [1, 7]
        assert len(wakeups) == 2  # one per batch, not one per request
        await b.stop()

    run(main())


def test_cancel_says_whether_the_request_was_still_queued() -> None:
    async def main() -> None:
        model = Model(hold=True)
        b = await started(model, max_batch_size=4)
        computing = b.submit(rows(0))
        await queued(b, 0)  # taken by the worker: computing, held on the gate
        waiting = b.submit(rows(1))
        await queued(b, 1)
        assert waiting.cancel() is True  # withdrawn: never computed
        assert waiting.cancel() is True  # asking again gives the same answer
        assert computing.cancel() is False  # too late: its batch runs to the end
        model.gate.set()
        later = b.submit(rows(2))
        np.testing.assert_array_equal(await later, expected(rows(2)))
        assert not model.seen(1) and model.seen(0)
        s = b.stats()
        assert (s.dropped_cancelled, s.success_count, s.queue_rows) == (1, 2, 0)
        await b.stop()

    run(main())
