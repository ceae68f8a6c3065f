"""Shared helpers of the DynamicBatcher tests: a real numpy model that can be held busy.

States are forced with events (a run_batch held on a threading.Event keeps the
instance busy) and asserted on counts and values, never on how fast things ran.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from modelrepo.serving import ServingConfig
from server.batching.batcher import DynamicBatcher

WIDTH = 3


async def submit(
    batcher: DynamicBatcher, inputs: np.ndarray, deadline: float | None = None
) -> np.ndarray:
    """Queue ``inputs`` as the data plane does, await its batch, return its output rows."""
    future = batcher.submit(inputs, deadline)
    try:
        return await future
    except asyncio.CancelledError:
        future.cancel()  # still queued: dropped, never computed
        raise


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


def batching(**config: Any) -> ServingConfig:
    """A batcher configuration that waits for nothing unless a test says so."""
    return ServingConfig(**{"preferred_batch_sizes": (), "max_queue_delay_us": 0, **config})


async def started(model: Callable[[np.ndarray], np.ndarray], **config: Any) -> DynamicBatcher:
    config.setdefault("max_batch_size", 4)
    share = config.pop("max_queue_share", 1.0)
    batcher = DynamicBatcher(model, batching(**config), name="m", max_queue_share=share)
    batcher.start()
    return batcher


async def occupy(batcher: DynamicBatcher, model: Model, ident: int = 0) -> asyncio.Task:
    """Submit one request and wait until it is computing (held on the gate)."""
    task = asyncio.create_task(submit(batcher, rows(ident)))
    await until(lambda: len(model.batches) >= 1, "the first batch to start")
    return task


def submit_all(batcher: DynamicBatcher, requests: dict[int, int]) -> dict[int, asyncio.Task]:
    return {i: asyncio.create_task(submit(batcher, rows(i, n))) for i, n in requests.items()}


async def queued(batcher: DynamicBatcher, n_rows: int) -> None:
    await until(lambda: batcher.stats().queue_rows == n_rows, f"{n_rows} queued rows")
