"""Measuring one candidate: a closed-loop sweep, then its Server-scenario rate.

The sweep raises concurrency until throughput stops improving (or p99 runs far
past the target), which gives the candidate's peak throughput and brackets
its sustainable rate. The Server scenario (as MLPerf's) is then the highest
Poisson arrival rate whose p99 meets the target with nothing rejected: a
bisection over rate with a bounded number of steps, starting just below the
closed-loop rate that met the target. The search only sees ``Measure``:
anything that turns a candidate into a ``Trial`` (the real server, or a
simulated one in the tests).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from modelrepo.serving import ServingConfig


@dataclass(frozen=True)
class Point:
    """One load level: closed loop at ``level`` workers, or open loop at ``level`` req/s."""

    mode: str  # "closed" | "open"
    level: float
    throughput: float  # images answered per second
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    rejected: int = 0  # RESOURCE_EXHAUSTED: the server's queue was full
    errors: int = 0  # any other failure, and arrivals the client could not send
    batching_efficiency: float | None = None  # images per executed batch
    seconds: float = 0.0  # wall time the level took, warm-up included

    def meets(self, target_ms: float) -> bool:
        return (
            self.requests > 0
            and self.p99_ms is not None
            and self.p99_ms <= target_ms
            and self.rejected == 0
            and self.errors == 0
        )


class Probe(Protocol):
    """A server under a candidate's configuration, one load level at a time."""

    def configure(self, candidate: ServingConfig) -> None: ...

    def closed(self, concurrency: int) -> Point: ...

    def open(self, rate: float) -> Point: ...


@dataclass(frozen=True)
class MeasurePlan:
    target_p99_ms: float
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    sweep_gain: float = 0.05  # a level must add 5 % throughput to go on
    sweep_p99_cap: float = 4.0  # ... and keep p99 under 4x the target
    rate_steps: int = 5
    rate_resolution: float = 0.05  # stop bisecting when the bracket is this narrow

    def __post_init__(self) -> None:
        if self.target_p99_ms <= 0:
            raise ValueError(f"p99 target {self.target_p99_ms} ms: must be > 0")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels {self.concurrency}: need integers >= 1")
        if self.rate_steps < 1:
            raise ValueError(f"rate_steps {self.rate_steps}: must be >= 1")


@dataclass
class Trial:
    """One measurement of one candidate."""

    sweep: list[Point]
    rates: list[Point]  # open-loop probes in the order run
    server_rate: float  # highest passing rate, req/s (0: none passed)
    resolution: float  # relative width of the final bracket (the bisection's own noise)

    @property
    def peak(self) -> Point:
        return max(self.sweep, key=lambda p: p.throughput)

    @property
    def at_rate(self) -> Point | None:
        passing = [p for p in self.rates if p.level == self.server_rate and self.server_rate > 0]
        return passing[-1] if passing else None

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in [*self.sweep, *self.rates])

    @property
    def rejected(self) -> int:
        return sum(p.rejected for p in [*self.sweep, *self.rates])


class Measure(Protocol):
    """ServingConfig -> one Trial, measured afresh (a repeat must not lean on the last one)."""

    def __call__(self, candidate: ServingConfig) -> Trial: ...


def sweep(probe: Probe, plan: MeasurePlan, on_point: Callable[[Point], None]) -> list[Point]:
    """Closed-loop levels in order, stopping once throughput stops improving."""
    points: list[Point] = []
    best = 0.0
    for level in sorted(set(plan.concurrency)):
        p = probe.closed(level)
        points.append(p)
        on_point(p)
        improved = p.throughput >= best * (1 + plan.sweep_gain)
        best = max(best, p.throughput)
        too_slow = p.p99_ms is None or p.p99_ms > plan.target_p99_ms * plan.sweep_p99_cap
        if (len(points) > 1 and not improved) or too_slow or p.rejected or p.errors:
            break
    return points


def server_rate(
    probe: Probe,
    plan: MeasurePlan,
    ceiling: float,
    first: float | None,
    on_point: Callable[[Point], None],
) -> tuple[float, float, list[Point]]:
    """Bisection over rate in (0, ``ceiling``]: (highest passing rate, resolution, probes)."""
    lo, hi = 0.0, max(ceiling, 1e-3)
    rate = first if first is not None and 0 < first < hi else hi / 2
    probes: list[Point] = []
    for _ in range(plan.rate_steps):
        p = probe.open(rate)
        probes.append(p)
        on_point(p)
        if p.meets(plan.target_p99_ms):
            lo = rate
        else:
            hi = rate
        if hi - lo <= plan.rate_resolution * hi:
            break
        rate = (lo + hi) / 2
    return lo, (hi - lo) / hi, probes


def measure_candidate(
    probe: Probe,
    candidate: ServingConfig,
    plan: MeasurePlan,
    on_point: Callable[[Point], None] = lambda _: None,
) -> Trial:
    probe.configure(candidate)
    points = sweep(probe, plan, on_point)
    peak = max(p.throughput for p in points)
    # Start just below the fastest closed-loop level that met the target.
    met = [p.throughput for p in points if p.meets(plan.target_p99_ms)]
    first = 0.9 * max(met) if met else None
    rate, resolution, probes = server_rate(probe, plan, 1.05 * peak, first, on_point)
    return Trial(points, probes, rate, resolution)


@dataclass
class ProbeMeasure:
    """``Measure`` over a ``Probe``: configure, sweep, bisect."""

    probe: Probe
    plan: MeasurePlan
    on_point: Callable[[Point], None] = field(default=lambda _: None)

    def __call__(self, candidate: ServingConfig) -> Trial:
        return measure_candidate(self.probe, candidate, self.plan, self.on_point)


@dataclass
class Measurement:
    """Every trial of one candidate; medians with their min-max spread."""

    candidate: ServingConfig
    trials: list[Trial] = field(default_factory=list)

    def _values(self, get: Callable[[Trial], float | None]) -> list[float]:
        return [v for v in (get(t) for t in self.trials) if v is not None]

    def _median(self, get: Callable[[Trial], float | None]) -> float | None:
        values = self._values(get)
        return float(statistics.median(values)) if values else None

    @property
    def rate(self) -> float:
        return self._median(lambda t: t.server_rate) or 0.0

    @property
    def rate_range(self) -> tuple[float, float]:
        values = self._values(lambda t: t.server_rate)
        return (min(values), max(values)) if values else (0.0, 0.0)

    @property
    def spread_pct(self) -> float | None:
        """(max - min) / median of the rate over trials; None with one trial."""
        lo, hi = self.rate_range
        if len(self.trials) < 2 or self.rate <= 0:
            return None
        return 100 * (hi - lo) / self.rate

    @property
    def resolution_pct(self) -> float:
        return 100 * max((t.resolution for t in self.trials), default=0.0)

    @property
    def peak_throughput(self) -> float:
        return self._median(lambda t: t.peak.throughput) or 0.0

    @property
    def peak_range(self) -> tuple[float, float]:
        values = self._values(lambda t: t.peak.throughput)
        return (min(values), max(values)) if values else (0.0, 0.0)

    def at_rate(self, field_name: str) -> float | None:
        """Median over trials of a figure of the passing open-loop point."""
        return self._median(lambda t: getattr(t.at_rate, field_name) if t.at_rate else None)

    def at_peak(self, field_name: str) -> float | None:
        return self._median(lambda t: getattr(t.peak, field_name))

    @property
    def rejected(self) -> int:
        return sum(t.rejected for t in self.trials)

    @property
    def best_p99_ms(self) -> float | None:
        """The lowest p99 seen at any open-loop rate (what an unreachable target missed by)."""
        values = [p.p99_ms for t in self.trials for p in t.rates if p.p99_ms is not None]
        return min(values) if values else None

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.trials)
