"""The batcher's counters and errors (its configuration is ``modelrepo.serving.ServingConfig``).

Kept apart from the mechanics in ``server/batching/batcher.py`` so that the error mapping
reads them without the thread logic.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from server.batching.waiters import LoopWaiter

# One forward pass giving (logits, feature map), for requests that ask for class
# activation maps (DynamicBatcher's ``run_features``).
RunFeatures = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class RowSource(Protocol):
    """A request's rows not held as an array but written into the batch's input when it
    runs (``imaging/pixelrows.py``: images normalised into the buffer the model reads).
    ``shape`` and ``dtype`` are the array's it stands for, so that it batches as one."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int: ...

    def write_into(self, out: np.ndarray) -> None: ...


# What a request queues: its rows as an array, or a source that writes them.
Inputs = np.ndarray | RowSource


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
    request_compute_ns: int = 0  # sum over answered requests of their batch's compute
    batch_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # size: (n, ns)
    # batches that copied a raw tensor's rows into their input (several requests gathered;
    # image rows are normalised straight into it, never copied: imaging/pixelrows.py)
    copied_batches: int = 0
    queue_rows: int = 0
    in_flight: int = 0

    def record_batch(self, requests: int, rows: int, compute_ns: int, copied: bool) -> None:
        """A successful batch of ``requests`` requests and ``rows`` rows (``copied``: a raw
        tensor's rows copied into its input)."""
        self.copied_batches += copied
        self.success_count += requests
        self.inference_count += rows
        self.execution_count += 1
        self.compute_ns += compute_ns
        self.request_compute_ns += compute_ns * requests
        count, total = self.batch_sizes.get(rows, (0, 0))
        self.batch_sizes[rows] = (count + 1, total + compute_ns)


class BatchObserver(Protocol):
    """Hook for metrics (histograms); called from the worker thread after each batch."""

    def on_batch(
        self, batch_size: int, queue_seconds: list[float], compute_seconds: float
    ) -> None: ...


class BatchTrace(Protocol):
    """A traced request (``server/core/trace.py``): told its batch's times by the worker."""

    def batched(
        self, queued: float, dispatched: float, input_end_ns: int, output_start_ns: int
    ) -> None: ...


@dataclass(eq=False)  # identity equality: deque.remove must not compare arrays
class PendingRequest:
    """One caller's rows in the batcher's queue."""

    inputs: Inputs
    rows: int
    deadline: float | None
    # its rows, or (rows, feature rows) with features: a thread's future or a loop's waiter
    future: concurrent.futures.Future[Any] | LoopWaiter
    arrival: float
    arrived_busy: bool  # every instance was busy when it arrived
    owner: Hashable | None = None  # the client, for its share of the queue
    queued: bool = True
    features: bool = False  # also wants the feature map (class activation maps)
    trace: BatchTrace | None = None  # a sampled request: its queue and compute times
    withdrawn: bool = False  # taken out of the queue because its caller gave up


def rows_of(inputs: Inputs, max_batch_size: int, model: str) -> int:
    """A request's row count, or why it cannot be queued (a caller's bug, or too many)."""
    rows = isinstance(inputs, np.ndarray) or callable(getattr(inputs, "write_into", None))
    if not rows or len(inputs.shape) == 0 or inputs.shape[0] < 1:
        shape = getattr(inputs, "shape", type(inputs).__name__)
        raise ValueError(f"inputs need a leading batch dimension of >= 1 rows, got {shape}")
    n = int(inputs.shape[0])
    if n > max_batch_size:
        raise RequestTooLargeError(
            f"request of {n} rows exceeds max_batch_size {max_batch_size} of model {model!r}"
        )
    return n


def is_expired(req: PendingRequest, now: float) -> bool:
    return req.deadline is not None and req.deadline <= now


def late_message(model: str, deadline: float, arrival: float, now: float) -> str:
    late_ms, queued_ms = (now - deadline) * 1e3, (now - arrival) * 1e3
    return (
        f"deadline of a request to model {model!r} passed {late_ms:.1f} ms ago,"
        f" {queued_ms:.1f} ms queued; not computed"
    )
