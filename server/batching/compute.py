"""One batch through the model: its input gathered, the run timed, its rows checked,
each request answered with its rows.

Apart from the queue mechanics (``server/batching/batcher.py``): this is the only part
that touches the requests' arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from server.batching.types import BatchSizeMismatchError, PendingRequest, RunFeatures
from server.batching.waiters import Settlement


class Runner(Protocol):
    """What of the batcher a batch runs with."""

    name: str
    run_batch: Callable[[np.ndarray], np.ndarray]
    run_features: RunFeatures | None


def gather(batch: list[PendingRequest], rows: int) -> tuple[np.ndarray, bool]:
    """The batch's input and whether a raw tensor's rows were copied into it: a lone
    raw-tensor request's own array; else one new array that each request writes its rows
    into once (images: normalised straight into it by ``write_into``, on this worker
    thread; numpy's ufuncs release the GIL), with no parts concatenated."""
    first = batch[0].inputs
    if len(batch) == 1 and isinstance(first, np.ndarray):
        return first, False
    x = np.empty((rows, *first.shape[1:]), dtype=first.dtype)
    offset, copied = 0, False
    for req in batch:
        part, inputs = x[offset : offset + req.rows], req.inputs
        if isinstance(inputs, np.ndarray):
            part[...] = inputs
            copied = True
        else:
            inputs.write_into(part)
        offset += req.rows
    return x, copied


def compute(
    runner: Runner, batch: list[PendingRequest], rows: int
) -> tuple[np.ndarray, Any, int, int, bool]:
    """Gather, run (with the feature map if a request wants it), check rows; the outputs,
    the feature maps, when the run started (monotonic ns), its ns, and whether a raw
    tensor was copied into the input (``gather``)."""
    x, copied = gather(batch, rows)
    start = time.monotonic_ns()
    if runner.run_features is not None and any(r.features for r in batch):
        out, maps = runner.run_features(x)
    else:
        out, maps = np.asarray(runner.run_batch(x)), None
    elapsed = time.monotonic_ns() - start
    got = out.shape[0] if out.ndim else 0
    if got != rows:
        raise BatchSizeMismatchError(
            f"model {runner.name!r} returned {got} rows (shape {out.shape})"
            f" for a batch of {rows} rows ({len(batch)} requests)"
        )
    return out, maps, start, elapsed, copied


def answer(
    batch: list[PendingRequest],
    out: np.ndarray,
    maps: Any,
    dispatched: float,
    started_ns: int,
    compute_ns: int,
) -> None:
    """Each request its rows of the output (views, no copy; with the feature map's rows if
    it asked), its trace stamped; one wake-up of each waiting loop for the whole batch."""
    offset, settlement = 0, Settlement()
    for req in batch:
        if req.trace is not None:
            req.trace.batched(req.arrival, dispatched, started_ns, started_ns + compute_ns)
        rows = slice(offset, offset + req.rows)
        settlement.add(req.future, (out[rows], maps[rows]) if req.features else out[rows])
        offset += req.rows
    settlement.send()
