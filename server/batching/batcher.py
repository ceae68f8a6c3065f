"""Dynamic batching: many concurrent requests -> one blocking ``run_batch`` call.

Modelled on Triton's dynamic batcher, MLServer's adaptive batcher and Ray Serve's
``_BatchQueue``. One ``DynamicBatcher`` serves one model instance group: each of its
``instance_count`` worker threads runs one batch at a time (e.g. an ONNX Runtime
session call, which releases the GIL), so that many batches run at once.

Policy (applied by a worker whenever it is free, and on every submit, cancel and
queue-delay expiry):
1. Nothing is dispatched unless an instance is free; the queue is bounded by
   ``max_queue_size`` rows (beyond it submit raises ``QueueFullError`` at once).
2. A batch is the longest FIFO prefix of the queue whose rows fit in ``max_batch_size``
   (and share shape and dtype); a request is never split nor overtaken. Requests whose
   deadline passed, or whose caller cancelled, are dropped first (never computed).
3. With a free instance the prefix goes at once if the oldest request arrived while an
   instance was idle (latency first: measured best here), or the prefix reaches the
   largest preferred size (``max_batch_size`` when none is set) or cannot grow, or the
   batcher is draining.
4. Otherwise it waits for more requests, no longer than ``max_queue_delay_us`` after
   the oldest queued request's arrival.
5. ``dynamic_batching=False``: every request is its own batch, dispatched at once.

Workers form their own batches (a scheduler on the event loop waited behind the last
batch's responses). Loop callers await a ``LoopWaiter`` (one ``call_soon_threadsafe`` per
batch and loop; with others in flight a sleeping worker is woken once per loop pass,
``_wake``), threads a Future. Gathering a batch's input and running it: ``compute.py``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from modelrepo.serving import ServingConfig
from server.batching.compute import answer, compute
from server.batching.fairness import QueueShares
from server.batching.types import (
    BatcherClosedError,
    BatcherError,
    BatcherStats,
    BatchObserver,
    BatchSizeMismatchError,
    BatchTrace,
    DeadlineExceededError,
    Inputs,
    PendingRequest,
    QueueFullError,
    RequestTooLargeError,
    RunFeatures,
    is_expired,
    late_message,
    rows_of,
)
from server.batching.waiters import LoopWaiter, claim, fail

__all__ = [
    "BatchObserver",
    "BatcherClosedError",
    "BatcherError",
    "BatcherStats",
    "BatchSizeMismatchError",
    "DeadlineExceededError",
    "DynamicBatcher",
    "QueueFullError",
    "RequestTooLargeError",
]

log = logging.getLogger(__name__)


class DynamicBatcher:
    """Requests queued by callers, run in batches by worker threads. ``_pending``,
    ``_in_flight``, ``_accepting`` and ``_stats`` change only under ``_lock``; futures are
    completed outside it (their done callbacks take the lock)."""

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        config: ServingConfig,
        name: str = "",
        observer: BatchObserver | None = None,
        max_queue_share: float = 1.0,
        run_features: RunFeatures | None = None,
    ) -> None:
        """``max_queue_share``: of ``config.max_queue_size``, the most one owner may hold;
        ``run_features``: (logits, feature map), run only for batches that ask for it."""
        self.run_batch = run_batch
        self.run_features = run_features
        self.config = config
        self.name = name
        self.observer = observer
        self._stats = BatcherStats()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: collections.deque[PendingRequest] = collections.deque()
        self._shares = QueueShares(config, max_queue_share)
        self._in_flight = 0
        self._sleeping = 0  # workers in ``_changed.wait``: a submit wakes one only if any
        self._unwoken = 0  # loop submits since the last ``_wake`` call was scheduled
        self._accepting = False
        self._started = False
        self._workers: list[threading.Thread] = []

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def queue_rows(self) -> int:
        """Rows waiting now (cheap: no snapshot)."""
        return self._stats.queue_rows

    def start(self) -> None:
        """Start one worker thread per instance."""
        if self._started:
            raise RuntimeError(f"batcher of model {self.name!r} already started")
        self._started = self._accepting = True
        for i in range(self.config.instance_count):
            worker = threading.Thread(target=self._work, name=f"batch-{self.name}-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def close(self, drain: bool = True) -> None:
        """Refuse new requests; finish (drain) or fail the queued ones; end the workers."""
        with self._lock:
            self._accepting = False
            stranded = [] if drain else self._take_all()
            self._changed.notify_all()
        closed = BatcherClosedError(f"model {self.name!r} stopped before batching")
        for req in stranded:
            self._fail(req, closed)
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.join()

    async def stop(self, drain: bool = True) -> None:
        """``close`` without blocking the event loop."""
        await asyncio.to_thread(self.close, drain)

    def stats(self) -> BatcherStats:
        """A snapshot; safe to keep while the batcher goes on."""
        with self._lock:
            return dataclasses.replace(self._stats, batch_sizes=dict(self._stats.batch_sizes))

    def submit(
        self,
        inputs: Inputs,
        deadline: float | None = None,
        owner: Hashable | None = None,
        features: bool = False,
        trace: BatchTrace | None = None,
        crowd: bool = False,
    ) -> LoopWaiter:
        """``submit_future`` for a caller on an event loop (call it there): await the waiter;
        its ``cancel()`` withdraws the request and says whether it was still queued.
        ``crowd``: the caller has other requests in flight, so a sleeping worker is woken
        after the loop's pass, once for all it queues (a lone request wakes it at once)."""
        waiter = LoopWaiter(self._withdraw)
        waiter.request = self._enqueue(inputs, deadline, owner, features, trace, waiter, crowd)
        return waiter

    def submit_future(
        self,
        inputs: Inputs,
        deadline: float | None = None,
        owner: Hashable | None = None,
        features: bool = False,
        trace: BatchTrace | None = None,
    ) -> concurrent.futures.Future[Any]:
        """Queue ``inputs``; the future gets its output rows (``features``: and their feature
        maps). Cancel it to withdraw. ``owner`` (a client) may hold only its share; ``trace``
        (a sampled request) is told its queue and compute times."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        req = self._enqueue(inputs, deadline, owner, features, trace, future)
        future.add_done_callback(lambda f: self._withdraw(req) if f.cancelled() else None)
        return future

    def _enqueue(
        self,
        inputs: Inputs,
        deadline: float | None,
        owner: Hashable | None,
        features: bool,
        trace: BatchTrace | None,
        future: concurrent.futures.Future[Any] | LoopWaiter,
        crowd: bool = False,
    ) -> PendingRequest:
        """Check and queue one request (or raise why not)."""
        if not self._accepting:
            raise BatcherClosedError(f"model {self.name!r} is not accepting requests")
        if features and self.run_features is None:
            raise ValueError(f"model {self.name!r} has no feature map output")
        n, cfg = rows_of(inputs, self.config.max_batch_size, self.name), self.config
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            with self._lock:
                self._stats.dropped_deadline += 1
                self._stats.failure_count += 1
            raise DeadlineExceededError(late_message(self.name, deadline, now, now))
        with self._lock:
            if self._stats.queue_rows + n > cfg.max_queue_size:
                self._stats.rejected_queue_full += 1
                raise QueueFullError(
                    f"queue of model {self.name!r} is full: {self._stats.queue_rows} rows"
                    f" waiting, limit {cfg.max_queue_size} (request of {n} rows rejected)"
                )
            if unfair := self._shares.refusal(owner, n, self.name):
                self._stats.rejected_queue_full += 1
                raise QueueFullError(unfair)
            busy = self._in_flight >= cfg.instance_count
            req = PendingRequest(
                inputs, n, deadline, future, now, busy, owner, features=features, trace=trace
            )
            self._pending.append(req)
            self._shares.add(owner, n)
            self._stats.queue_rows += n
            if self._sleeping and crowd and isinstance(future, LoopWaiter):
                self._unwoken += 1  # one wake-up per loop pass
                if self._unwoken == 1:
                    future.loop.call_soon(self._wake)
            elif self._sleeping:  # Condition.notify costs microseconds even with none waiting
                self._changed.notify()
        return req

    def _wake(self) -> None:
        """After a loop pass's ``crowd`` submits: one wake-up (a futex) for all they queued."""
        with self._lock:
            n, self._unwoken = self._unwoken, 0
            if self._sleeping:
                self._changed.notify(n)

    def _withdraw(self, req: PendingRequest) -> bool:
        """The caller cancelled: drop it if still queued (never computed); whether it was."""
        with self._lock:
            if req.queued:
                self._pending.remove(req)
                self._unqueue(req)
                self._stats.dropped_cancelled += 1
                req.withdrawn = True
                self._changed.notify()  # the head may have changed
            return req.withdrawn

    # -- worker threads -------------------------------------------------------
    def _work(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._run(batch)
        except BaseException as exc:  # a bug here must not leave callers hanging
            log.exception("batcher worker of model %r failed", self.name)
            with self._lock:
                self._accepting = False
                stranded = self._take_all()
                self._changed.notify_all()
            for req in stranded:
                self._fail(req, exc)

    def _next_batch(self) -> list[PendingRequest] | None:
        """Block until the policy yields a batch for this (free) instance; None: stop."""
        expired: list[tuple[PendingRequest, BaseException]] = []
        try:
            with self._lock:
                while True:
                    if not self._pending:
                        if not self._accepting:
                            return None
                        self._sleep(None)
                        continue
                    now = time.monotonic()
                    batch, wait_s = self._form(now, expired)
                    batch = [r for r in batch if self._claim(r)]
                    if batch:
                        for req in batch:
                            self._stats.queue_ns += int((now - req.arrival) * 1e9)
                        self._in_flight += 1
                        self._stats.in_flight = self._in_flight
                        return batch
                    if wait_s > 0:
                        self._sleep(wait_s)
        finally:
            for req, error in expired:  # outside the lock: done callbacks take it
                self._fail(req, error)

    def _sleep(self, timeout: float | None) -> None:
        """Under the lock: wait for a change, counted so that a submit knows to notify."""
        self._sleeping += 1
        try:
            self._changed.wait(timeout)
        finally:
            self._sleeping -= 1

    def _claim(self, req: PendingRequest) -> bool:
        """Under the lock: take a request out of the queue for computing."""
        self._unqueue(req)
        if claim(req.future):
            return True  # from here on its caller's cancel() says it was computing
        self._stats.dropped_cancelled += 1  # cancelled a moment ago
        req.withdrawn = True
        return False

    def _run(self, batch: list[PendingRequest]) -> None:
        dispatched = time.monotonic()
        rows = sum(r.rows for r in batch)
        try:
            out, maps, started_ns, compute_ns, copied = compute(self, batch, rows)
            for req in batch:  # req <-> future is a cycle: free the megabytes without the GC
                req.inputs = None  # type: ignore[assignment]
        except Exception as exc:
            with self._lock:
                self._in_flight -= 1
                self._stats.in_flight = self._in_flight
            for req in batch:
                self._fail(req, exc)
            return
        with self._lock:
            self._in_flight -= 1
            self._stats.in_flight = self._in_flight
            self._stats.record_batch(len(batch), rows, compute_ns, copied)
        answer(batch, out, maps, dispatched, started_ns, compute_ns)
        if self.observer is not None:
            try:
                queued = [dispatched - r.arrival for r in batch]
                self.observer.on_batch(rows, queued, compute_ns * 1e-9)
            except Exception:  # metrics must never fail inference
                log.exception("batch observer of model %r failed", self.name)

    def _form(
        self, now: float, expired: list[tuple[PendingRequest, BaseException]]
    ) -> tuple[list[PendingRequest], float]:
        """Under the lock: (batch, 0) to dispatch now, or ([], seconds) to wait."""
        cfg = self.config
        self._purge(now, expired)
        if not self._pending:
            return [], 0.0
        head = self._pending[0]
        batch: list[PendingRequest] = []
        rows, full = 0, not cfg.dynamic_batching
        for req in self._pending if cfg.dynamic_batching else [head]:
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

    def _purge(self, now: float, expired: list[tuple[PendingRequest, BaseException]]) -> None:
        """Under the lock: take out expired requests; the caller fails them after."""
        for req in [r for r in self._pending if is_expired(r, now)]:
            self._pending.remove(req)
            self._unqueue(req)
            self._stats.dropped_deadline += 1
            error = DeadlineExceededError(
                late_message(self.name, req.deadline or now, req.arrival, now)
            )
            expired.append((req, error))

    def _take_all(self) -> list[PendingRequest]:
        """Under the lock: empty the queue (the caller fails what it returns)."""
        taken = list(self._pending)
        self._pending.clear()
        for req in taken:
            self._unqueue(req)
        return taken

    def _unqueue(self, req: PendingRequest) -> None:
        req.queued = False
        self._stats.queue_rows -= req.rows
        self._shares.remove(req.owner, req.rows)

    def _fail(self, req: PendingRequest, exc: BaseException) -> None:
        """Outside the lock: fail a request nobody answered yet."""
        if fail(req.future, exc):
            with self._lock:
                self._stats.failure_count += 1
