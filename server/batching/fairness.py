"""Each client's share of a model's queue.

One client (a gRPC connection, or one ModelStreamInfer stream) that sends faster
than the model computes, or that never reads its answers, used to fill the whole
queue: another client's requests then got RESOURCE_EXHAUSTED (10 of 28 in the
issue's test). Each client may hold at most ``share`` of the queue's rows (never
less than one full batch), so the rest of the queue always has room for others.
Requests without an owner (in-process callers) are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from modelrepo.serving import ServingConfig


class QueueShares:
    """Rows each owner has queued now. Not thread-safe: the batcher's lock guards it."""

    def __init__(self, config: ServingConfig, share: float) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"max_queue_share must be in (0, 1], got {share}")
        self.share = share
        self.max_queue_size = config.max_queue_size
        self.limit = max(math.ceil(self.share * self.max_queue_size), config.max_batch_size)
        self._rows: dict[Hashable, int] = {}

    def refusal(self, owner: Hashable | None, n: int, name: str) -> str | None:
        """Why ``owner`` may not queue ``n`` more rows, or None when it may."""
        held = self._rows.get(owner, 0) if owner is not None else 0
        if owner is None or held + n <= self.limit:
            return None
        return (
            f"queue of model {name!r} is full for this client: it holds {held} rows, its "
            f"share is {self.limit} ({self.share:g} of the queue limit {self.max_queue_size}, "
            f"--max-queue-share); request of {n} rows rejected"
        )

    def add(self, owner: Hashable | None, n: int) -> None:
        if owner is not None:
            self._rows[owner] = self._rows.get(owner, 0) + n

    def remove(self, owner: Hashable | None, n: int) -> None:
        if owner is None:
            return
        left = self._rows.get(owner, 0) - n
        if left > 0:
            self._rows[owner] = left
        else:
            self._rows.pop(owner, None)
