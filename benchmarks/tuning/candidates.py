"""Serving configurations the tuner measures, and the pruning that chooses them.

A ``ServingConfig`` is the tunable half of config.pbtxt. Before any server runs,
ONNX Runtime is timed in process at growing batch sizes (per intra-op thread
count): that curve prunes the space, so the search measures a handful of
configurations instead of a grid.

- A batch whose compute alone takes more than ``feasible_fraction`` of the p99
  target cannot meet it once a request also waits behind a running batch.
- Past the knee (doubling the batch adds less than ``knee_gain`` images/s) a
  larger ``max_batch_size`` only adds latency; one size past it is kept so the
  server can disagree with the in-process curve.
- An instances x threads split predicted more than ``prune_margin`` below the
  best split is dropped; instances x threads never exceed the cores.
- Queue delays longer than ``delay_fraction`` of the target are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelrepo.serving import ServingConfig

DELAYS_US = (0, 500, 1000, 2000, 4000, 8000, 16000, 32000)
GRID_BATCH_SIZES = (1, 2, 4, 8, 16)  # what a blind grid would try (for the report)
DIMENSIONS = ("parallelism", "max_batch_size", "max_queue_delay_us", "preferred_batch_sizes")


class TargetUnreachable(ValueError):
    """No configuration can meet the latency target; the message says why."""


def simplicity(candidate: ServingConfig, default: ServingConfig) -> tuple:
    """Sort key, simplest first: the default itself, then fewer instances, a
    smaller queue delay, the default's batching settings, smaller batches."""
    return (
        candidate != default,
        candidate.instance_count,
        candidate.max_queue_delay_us,
        (candidate.max_batch_size != default.max_batch_size)
        + (candidate.preferred_batch_sizes != default.preferred_batch_sizes),
        candidate.max_batch_size,
        candidate.intra_op_threads != default.intra_op_threads,
    )


@dataclass(frozen=True)
class CurvePoint:
    """In-process ONNX Runtime at one batch size and thread count."""

    threads: int
    batch: int
    p50_ms: float
    spread_pct: float = 0.0

    @property
    def throughput(self) -> float:
        return self.batch * 1e3 / self.p50_ms


@dataclass(frozen=True)
class Pruning:
    feasible_fraction: float = 0.5
    knee_gain: float = 0.10
    prune_margin: float = 0.30
    delay_fraction: float = 0.25


def curve_continues(points: list[CurvePoint], target_ms: float, pruning: Pruning) -> bool:
    """Whether timing a larger batch (same thread count) can still matter: stop once a
    batch is infeasible for the target or stopped adding throughput (one past the knee)."""
    if not points:
        return True
    if points[-1].p50_ms > target_ms * pruning.feasible_fraction:
        return False
    return len(points) < 2 or points[-1].throughput >= points[-2].throughput * (
        1 + pruning.knee_gain
    )


@dataclass(frozen=True)
class Space:
    """The pruned values of every dimension, and where the search starts."""

    parallelism: tuple[tuple[int, int], ...]  # (instances, threads), best predicted first
    max_batch_sizes: tuple[int, ...]  # ascending
    queue_delays_us: tuple[int, ...]  # ascending
    seed: ServingConfig
    grid_size: int  # what a blind grid over the unpruned values would measure
    notes: tuple[str, ...] = field(default=())

    def options(self, dim: str, current: ServingConfig) -> list[ServingConfig]:
        """The candidates along ``dim`` from ``current``, which is among them (ordered by
        value for max_batch_size and the queue delay, so the search can climb them)."""
        if dim == "parallelism":
            values = [dict(instance_count=i, intra_op_threads=t) for i, t in self.parallelism]
        elif dim == "max_batch_size":
            sizes = sorted({*self.max_batch_sizes, current.max_batch_size})
            values = [dict(max_batch_size=b) for b in sizes]
        elif current.max_batch_size == 1:  # nothing to wait for or prefer: one image a batch
            values = []
        elif dim == "max_queue_delay_us":
            delays = sorted({*self.queue_delays_us, current.max_queue_delay_us})
            values = [dict(max_queue_delay_us=d) for d in delays]
        elif dim == "preferred_batch_sizes":
            values = [dict(preferred_batch_sizes=p) for p in preferred_options(current)]
        else:
            raise ValueError(f"unknown dimension {dim!r}; choose from {', '.join(DIMENSIONS)}")
        return list(dict.fromkeys([current.changed(**v) for v in values] or [current]))


def preferred_options(current: ServingConfig) -> list[tuple[int, ...]]:
    """None (wait for max_batch_size), half of it, a quarter and a half; the current one."""
    m = current.max_batch_size
    out = [(), *([(m // 2,)] if m >= 4 else []), *([(m // 4, m // 2)] if m >= 8 else [])]
    if current.preferred_batch_sizes not in out:
        out.append(current.preferred_batch_sizes)
    return out


def _knee(points: list[CurvePoint], gain: float) -> int:
    for prev, nxt in zip(points, points[1:], strict=False):
        if nxt.throughput < prev.throughput * (1 + gain):
            return prev.batch
    return points[-1].batch


def space_from_curve(
    curve: list[CurvePoint],
    target_ms: float,
    cores: int,
    default: ServingConfig,
    *,
    max_instances: int | None = None,
    pruning: Pruning = Pruning(),
) -> Space:
    """Prune the search space with the in-process batch curve (see the module doc)."""
    if not curve:
        raise ValueError("the in-process batch curve is empty: nothing to prune with")
    by_threads: dict[int, list[CurvePoint]] = {}
    for p in sorted(curve, key=lambda p: (p.threads, p.batch)):
        by_threads.setdefault(p.threads, []).append(p)
    _check_reachable(by_threads, target_ms)
    limit = target_ms * pruning.feasible_fraction
    feasible = {
        t: [p for p in pts if p.p50_ms <= limit] or pts[:1] for t, pts in by_threads.items()
    }
    max_instances = max(1, min(max_instances or cores, cores))
    splits = [
        (i, t) for i in range(1, max_instances + 1) for t in sorted(by_threads) if i * t <= cores
    ] or [(1, min(by_threads))]
    kept, notes = _best_layouts(splits, feasible, pruning)
    instances, threads = kept[0]
    knee, batch_sizes, batch_notes = _batch_sizes(
        feasible[threads], by_threads[threads], threads, target_ms, pruning
    )
    bound_us = target_ms * 1e3 * pruning.delay_fraction
    delays = tuple(sorted({d for d in DELAYS_US if d <= bound_us})) or (0,)
    seed_delay = max((d for d in delays if d <= default.max_queue_delay_us), default=0)
    seed_delay = 0 if knee == 1 else seed_delay  # a batch of one never waits
    seed = default.changed(
        max_batch_size=knee,
        max_queue_delay_us=seed_delay,
        instance_count=instances,
        intra_op_threads=threads,
    )
    grid_sizes = {*GRID_BATCH_SIZES, default.max_batch_size}
    grid = len(splits) * len(grid_sizes) * len(DELAYS_US) * 3  # 3 preferred-size choices
    return Space(tuple(kept), batch_sizes, delays, seed, grid, (*notes, *batch_notes))


def _check_reachable(by_threads: dict[int, list[CurvePoint]], target_ms: float) -> None:
    """Refuse a target that ONNX Runtime alone, at its fastest, already misses."""
    fastest = min((pts[0] for pts in by_threads.values()), key=lambda p: p.p50_ms)
    if fastest.p50_ms > target_ms:
        raise TargetUnreachable(
            f"p99 target {target_ms:g} ms is out of reach on this machine: ONNX Runtime alone "
            f"takes {fastest.p50_ms:.3g} ms (p50, batch {fastest.batch}, {fastest.threads} "
            "thread(s), in process) before any serving overhead; raise --p99-ms well above "
            f"{fastest.p50_ms:.3g} ms or use a smaller model"
        )


def _best_layouts(
    splits: list[tuple[int, int]], feasible: dict[int, list[CurvePoint]], pruning: Pruning
) -> tuple[list[tuple[int, int]], list[str]]:
    """The (instances, threads) splits predicted within the prune margin of the best, best
    first, and a note for each one dropped."""
    predicted = {(i, t): i * max(p.throughput for p in feasible[t]) for i, t in splits}
    best = max(predicted.values())
    kept = sorted(
        (s for s in splits if predicted[s] >= best * (1 - pruning.prune_margin)),
        key=lambda s: (-predicted[s], s),
    )
    notes = [
        f"{s[0]} instance(s) x {s[1]} thread(s) dropped: predicted "
        f"{predicted[s]:.0f} img/s, more than {pruning.prune_margin:.0%} below "
        f"{kept[0][0]}x{kept[0][1]}'s {best:.0f}"
        for s in splits
        if s not in kept
    ]
    return kept, notes


def _batch_sizes(
    feasible: list[CurvePoint],
    measured: list[CurvePoint],
    threads: int,
    target_ms: float,
    pruning: Pruning,
) -> tuple[int, tuple[int, ...], list[str]]:
    """(knee, the max_batch_size values to try, notes): feasible sizes up to the knee, and
    one past it."""
    limit = target_ms * pruning.feasible_fraction
    knee = _knee(feasible, pruning.knee_gain)
    sizes = [p.batch for p in feasible]
    past = sizes[sizes.index(knee) + 1 : sizes.index(knee) + 2]
    batch_sizes = tuple(b for b in sizes if b <= knee) + tuple(past)
    notes = []
    too_slow = [p.batch for p in measured if p.p50_ms > limit]
    if too_slow:
        notes.append(
            f"batch sizes from {min(too_slow)} up dropped: the compute of a batch of "
            f"{min(too_slow)} alone exceeds {pruning.feasible_fraction:.0%} of the "
            f"{target_ms:g} ms target"
        )
    notes.append(
        f"in-process knee at batch {knee} ({threads} threads): larger batches add less than "
        f"{pruning.knee_gain:.0%} images/s; max_batch_size tried in {list(batch_sizes)}"
    )
    return knee, batch_sizes, notes
