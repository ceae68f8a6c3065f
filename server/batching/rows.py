"""Rows of a shared buffer that decoders write into, so that a batch of several image
requests can run on the rows they were decoded into, with no copy (issue 28).

Each image request reserves its rows when it is admitted (``RowArena.reserve``): the
next free rows of the model's current slab, a buffer of a few batches' rows (at most
``SLAB_BYTES``; each served version holds one, and old ones while their rows are in use).
Rows are handed out once and never reused; a slab that cannot hold the next request is
let go (it lives on while any of its rows does) and a new one is made. Nothing about
the queue changes: a request is batched when it is queued, as before. Only when a
batch's requests turn out to hold consecutive rows of one buffer (``joined``) does the
batch run on those rows; otherwise (a request's decode failed or it was cancelled,
requests of two slabs, raw tensors) the batcher copies the rows into one array as it
always did. Decoding order does not matter: a batch is put in row order, and each
request is answered with its own rows wherever they sit.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

MiB = 1 << 20
SLAB_BYTES = 32 * MiB  # a slab holds fewer rows when they are large


class Rows(Protocol):
    """A queued request as ``joined`` sees it: its rows."""

    inputs: np.ndarray


class RowArena:
    """Hands out consecutive rows of one slab at a time; thread-safe (a lock per call)."""

    def __init__(self, rows: int, slab_bytes: int = SLAB_BYTES) -> None:
        if rows < 1:
            raise ValueError(f"a slab needs at least one row, got {rows}")
        self.rows = rows
        self.slab_bytes = slab_bytes
        self._lock = threading.Lock()
        self._slab: np.ndarray | None = None
        self._next = 0

    def reserve(self, n: int, row_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """``n`` rows of ``row_shape`` to write, never handed out again (uninitialised)."""
        dtype = np.dtype(dtype)
        row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize)
        rows = min(self.rows, max(1, self.slab_bytes // row_bytes))
        if n > rows:  # as large as a batch may be: its own buffer, nothing to share
            return np.empty((n, *row_shape), dtype=dtype)
        with self._lock:
            slab = self._slab
            if (
                slab is None
                or self._next + n > len(slab)
                or slab.shape[1:] != row_shape
                or slab.dtype != dtype
            ):
                slab = self._slab = np.empty((rows, *row_shape), dtype=dtype)
                self._next = 0
            start = self._next
            self._next = start + n
        return slab[start : start + n]


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def joined(batch: list[Rows]) -> tuple[np.ndarray, list[int]] | None:
    """When the requests' inputs are, in some order, consecutive rows of one C-contiguous
    buffer with none shared: those rows (a view) and the order of ``batch`` they are in;
    else None (the rows must be copied)."""
    base = batch[0].inputs.base
    if not isinstance(base, np.ndarray) or not base.flags.c_contiguous or base.ndim < 1:
        return None
    row_bytes = base.strides[0] if len(base) > 1 else base.nbytes
    origin = _address(base)
    placed = []
    for i, req in enumerate(batch):
        x = req.inputs
        if (
            x.base is not base
            or x.dtype != base.dtype
            or not x.flags.c_contiguous
            or x.shape[1:] != base.shape[1:]
        ):
            return None
        offset, rest = divmod(_address(x) - origin, row_bytes)
        if rest:
            return None
        placed.append((offset, len(x), i))
    placed.sort()
    start = expected = placed[0][0]
    for offset, n, _ in placed:
        if offset != expected:
            return None  # a gap (a failed, cancelled or later request) or an overlap
        expected += n
    return base[start:expected], [i for _, _, i in placed]
