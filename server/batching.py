"""Dynamic batching: many concurrent requests -> one blocking ``run_batch`` call.

Modelled on Triton's dynamic batcher, MLServer's adaptive batcher and Ray Serve's
``_BatchQueue``. One ``DynamicBatcher`` serves one model instance group; its
``run_batch`` (e.g. an ONNX Runtime session call) runs off the event loop in a
thread pool of ``instance_count`` workers, so that many batches run at once.

Policy (one scheduler task; re-evaluated on every submit, completion, cancel):

1. Nothing is dispatched unless an instance is free; while all are busy the
   queue simply grows (bounded by ``max_queue_size`` rows: beyond it submit
   raises ``QueueFullError`` at once).
2. A batch is the longest FIFO prefix of the queue whose rows fit in
   ``max_batch_size`` (and whose rows share shape and dtype); a request is
   never split and never overtaken: one that does not fit waits for the next.
   Requests whose deadline has passed, or whose caller was cancelled, are
   dropped before this (never computed).
3. With a free instance the prefix is dispatched at once if the oldest request
   arrived while an instance was idle (latency first: measured best here), or
   the prefix reaches the largest preferred size (``max_batch_size`` when none
   is set) or cannot grow, or the batcher is draining.
4. Otherwise (the queue formed while every instance was busy and the batch is
   still small) it waits for more requests, but no longer than
   ``max_queue_delay_us`` after the oldest queued request's arrival.
5. ``enabled=False``: every request is its own batch, dispatched at once.

One output row per input row is checked; an error fails exactly the requests of
its batch. Results are views into the batch output (no copy).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class BatcherError(Exception):
    """Base of every error raised by the batcher itself."""


class QueueFullError(BatcherError):
    """Too many rows already waiting (maps to RESOURCE_EXHAUSTED)."""


class RequestTooLargeError(BatcherError, ValueError):
    """A single request has more rows than ``max_batch_size``."""


class DeadlineExceededError(BatcherError):
    """The request's deadline passed before it was batched; it was not computed."""


class BatcherClosedError(BatcherError):
    """The batcher is not started or is stopping."""


class BatchSizeMismatchError(BatcherError):
    """``run_batch`` returned a different number of rows than it was given."""


@dataclass(frozen=True)
class BatchingConfig:
    """Triton's ``dynamic_batching`` + ``instance_group`` in one place."""

    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    max_queue_size: int = 64  # rows (images) waiting, not requests
    instance_count: int = 1
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred batch size {size} must be in 1..{self.max_batch_size}"
                    " (max_batch_size)"
                )
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1 row, got {self.max_queue_size}")
        if self.instance_count < 1:
            raise ValueError(f"instance_count must be >= 1, got {self.instance_count}")

    @property
    def target_batch_size(self) -> int:
        """The size worth waiting for: the largest preferred, else the maximum."""
        return max(self.preferred_batch_sizes, default=self.max_batch_size)


@dataclass
class BatcherStats:
    """Cumulative counters (Triton ModelStatistics-like) plus current depth."""

    inference_count: int = 0  # rows computed in successful batches
    execution_count: int = 0  # successful batches
    success_count: int = 0  # requests answered with a result
    failure_count: int = 0  # requests failed: batch error, deadline, closed
    dropped_deadline: int = 0
    dropped_cancelled: int = 0
    rejected_queue_full: int = 0
    queue_ns: int = 0  # sum over dispatched requests of arrival -> dispatch
    compute_ns: int = 0  # sum over successful batches of run_batch time
    batch_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # size: (n, ns)
    queue_rows: int = 0
    in_flight: int = 0


class BatchObserver(Protocol):
    """Hook for metrics (histograms); called on the event loop after each batch."""

    def on_batch(
        self, batch_size: int, queue_seconds: list[float], compute_seconds: float
    ) -> None: ...


@dataclass(eq=False)  # identity equality: deque.remove must not compare arrays
class _Request:
    inputs: np.ndarray
    rows: int
    deadline: float | None
    future: asyncio.Future[np.ndarray]
    arrival: float
    arrived_busy: bool  # every instance was busy when it arrived
    queued: bool = True


def _expired(req: _Request, now: float) -> bool:
    return req.deadline is not None and req.deadline <= now


class DynamicBatcher:
    """Queues requests on the event loop and runs them in batches in threads."""

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        config: BatchingConfig,
        name: str = "",
        observer: BatchObserver | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.config = config
        self.name = name
        self.observer = observer
        self._stats = BatcherStats()
        self._pending: collections.deque[_Request] = collections.deque()
        self._in_flight = 0
        self._accepting = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduler: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._wake: asyncio.Event | None = None

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def start(self) -> None:
        """Create the loop-bound state here, on the running loop (not in __init__)."""
        if self._scheduler is not None:
            raise RuntimeError(f"batcher of model {self.name!r} already started")
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            self.config.instance_count, thread_name_prefix=f"batch-{self.name}"
        )
        self._accepting = True
        self._scheduler = asyncio.create_task(self._schedule(), name=f"batcher-{self.name}")

    async def stop(self, drain: bool = True) -> None:
        """Refuse new requests; finish (drain) or fail the queued ones; release threads."""
        if self._scheduler is None or self._wake is None:
            return
        self._accepting = False
        if not drain:
            while self._pending:
                req = self._pending.popleft()
                self._drop(req, BatcherClosedError(f"model {self.name!r} stopped before batching"))
        self._wake.set()
        await self._scheduler
        while self._tasks:
            await asyncio.gather(*self._tasks)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def stats(self) -> BatcherStats:
        """A snapshot; safe to keep while the batcher goes on."""
        return dataclasses.replace(self._stats, batch_sizes=dict(self._stats.batch_sizes))

    async def submit(self, inputs: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Queue ``inputs`` (n rows), await its batch, return exactly its n output rows."""
        if not self._accepting or self._wake is None:
            raise BatcherClosedError(f"model {self.name!r} is not accepting requests")
        if not isinstance(inputs, np.ndarray) or inputs.ndim == 0 or inputs.shape[0] < 1:
            shape = getattr(inputs, "shape", type(inputs).__name__)
            raise ValueError(f"inputs need a leading batch dimension of >= 1 rows, got {shape}")
        n, cfg = int(inputs.shape[0]), self.config
        if n > cfg.max_batch_size:
            raise RequestTooLargeError(
                f"request of {n} rows exceeds max_batch_size {cfg.max_batch_size}"
                f" of model {self.name!r}"
            )
        if self._stats.queue_rows + n > cfg.max_queue_size:
            self._stats.rejected_queue_full += 1
            raise QueueFullError(
                f"queue of model {self.name!r} is full: {self._stats.queue_rows} rows waiting,"
                f" limit {cfg.max_queue_size} (request of {n} rows rejected)"
            )
        future = asyncio.get_running_loop().create_future()
        busy = self._in_flight >= cfg.instance_count
        req = _Request(inputs, n, deadline, future, time.monotonic(), arrived_busy=busy)
        self._pending.append(req)
        self._stats.queue_rows += n
        self._wake.set()
        try:
            return await req.future
        except asyncio.CancelledError:
            if req.queued:  # caller went away before dispatch: never compute it
                self._pending.remove(req)
                self._unqueue(req)
                self._stats.dropped_cancelled += 1
                self._wake.set()
            raise

    # -- scheduling ---------------------------------------------------------

    async def _schedule(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()  # no await until the wait: nothing can be missed
                if not self._pending and not self._accepting:
                    return
                if not self._pending or self._in_flight >= self.config.instance_count:
                    await self._wake.wait()
                    continue
                batch, wait_s = self._form(time.monotonic())
                if batch:
                    self._dispatch(batch)
                elif wait_s > 0:
                    timer = loop.call_later(wait_s, self._wake.set)
                    await self._wake.wait()
                    timer.cancel()
        except Exception as exc:  # a bug here must not leave callers hanging
            log.exception("batcher of model %r failed", self.name)
            self._accepting = False
            while self._pending:
                self._drop(self._pending.popleft(), exc)

    def _form(self, now: float) -> tuple[list[_Request], float]:
        """Return (batch, 0) to dispatch now, or ([], seconds) to wait (policy 2-5)."""
        cfg = self.config
        for req in [r for r in self._pending if r.future.done() or _expired(r, now)]:
            self._pending.remove(req)
            if req.future.done():  # cancelled; its submit() has not run its handler yet
                self._unqueue(req)
                self._stats.dropped_cancelled += 1
                continue
            late_ms = (now - (req.deadline or 0.0)) * 1e3
            msg = f"deadline of a request to model {self.name!r} passed {late_ms:.1f} ms ago"
            queued_ms = (now - req.arrival) * 1e3
            self._drop(
                req, DeadlineExceededError(f"{msg}, {queued_ms:.1f} ms queued; not computed")
            )
            self._stats.dropped_deadline += 1
        if not self._pending:
            return [], 0.0
        head = self._pending[0]
        batch: list[_Request] = []
        rows, full = 0, not cfg.enabled
        for req in self._pending if cfg.enabled else [head]:
            x, h = req.inputs, head.inputs
            if (
                rows + req.rows > cfg.max_batch_size
                or x.shape[1:] != h.shape[1:]
                or x.dtype != h.dtype
            ):
                full = True
                break
            batch.append(req)
            rows += req.rows
        deadline = head.arrival + cfg.max_queue_delay_us * 1e-6
        if (
            full
            or rows >= cfg.target_batch_size
            or not head.arrived_busy
            or not self._accepting
            or self._stats.queue_rows >= cfg.max_queue_size
            or now >= deadline
        ):
            for _ in batch:
                self._pending.popleft()
            return batch, 0.0
        return [], deadline - now

    def _dispatch(self, batch: list[_Request]) -> None:
        now = time.monotonic()
        for req in batch:
            self._unqueue(req)
            self._stats.queue_ns += int((now - req.arrival) * 1e9)
        self._in_flight += 1
        self._stats.in_flight = self._in_flight
        task = asyncio.create_task(self._execute(batch, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: list[_Request], dispatched: float) -> None:
        assert self._executor is not None and self._wake is not None
        rows = sum(r.rows for r in batch)
        try:
            out, compute_ns = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._compute, [r.inputs for r in batch], rows
            )
        except Exception as exc:
            for req in batch:
                self._fail(req, exc)
        else:
            offset = 0
            for req in batch:
                if not req.future.done():
                    req.future.set_result(out[offset : offset + req.rows])
                    self._stats.success_count += 1
                offset += req.rows
            self._record(batch, rows, dispatched, compute_ns)
        finally:
            self._in_flight -= 1
            self._stats.in_flight = self._in_flight
            self._wake.set()

    def _compute(self, inputs: list[np.ndarray], rows: int) -> tuple[np.ndarray, int]:
        """Runs in a worker thread: concatenate, run, check one row out per row in."""
        x = inputs[0] if len(inputs) == 1 else np.concatenate(inputs, axis=0)
        start = time.monotonic_ns()
        out = np.asarray(self.run_batch(x))
        elapsed = time.monotonic_ns() - start
        got = out.shape[0] if out.ndim else 0
        if got != rows:
            raise BatchSizeMismatchError(
                f"model {self.name!r} returned {got} rows (shape {out.shape})"
                f" for a batch of {rows} rows ({len(inputs)} requests)"
            )
        return out, elapsed

    # -- bookkeeping --------------------------------------------------------

    def _record(self, batch: list[_Request], rows: int, dispatched: float, ns: int) -> None:
        s = self._stats
        s.inference_count += rows
        s.execution_count += 1
        s.compute_ns += ns
        count, total = s.batch_sizes.get(rows, (0, 0))
        s.batch_sizes[rows] = (count + 1, total + ns)
        if self.observer is not None:
            try:
                self.observer.on_batch(rows, [dispatched - r.arrival for r in batch], ns * 1e-9)
            except Exception:  # metrics must never fail inference
                log.exception("batch observer of model %r failed", self.name)

    def _unqueue(self, req: _Request) -> None:
        req.queued = False
        self._stats.queue_rows -= req.rows

    def _fail(self, req: _Request, exc: BaseException) -> None:
        if not req.future.done():
            req.future.set_exception(exc)
            self._stats.failure_count += 1

    def _drop(self, req: _Request, exc: BaseException) -> None:
        """Remove a queued request (already popped from ``_pending``) with an error."""
        self._unqueue(req)
        self._fail(req, exc)
