"""The batcher's configuration, counters and errors (Triton's dynamic_batching terms).

Kept apart from the mechanics in ``server/batching.py`` so that the server's
configuration code and the error mapping read them without the thread logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    max_queue_share: float = 0.5  # of max_queue_size, the most one client may hold
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
        if not 0 < self.max_queue_share <= 1:
            raise ValueError(f"max_queue_share must be in (0, 1], got {self.max_queue_share}")
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
