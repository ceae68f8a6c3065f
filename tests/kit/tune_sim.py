"""A simulated server for the tuner's search tests (a fake latency model, seeded noise).

What the tests check with it is the search (pruning, early stops, bisection,
re-measurement, tie-breaks, budgets), not the server, so the model only has to
behave like one qualitatively: a batch costs a fixed part plus a part per
image, so larger batches raise capacity but make a request wait behind a
longer batch; threads speed a batch up sub-linearly; instances x threads
beyond the cores share them; a queue delay adds latency; p99 grows as
1 / (1 - utilisation) and past capacity requests are rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from benchmarks.tuning.candidates import CurvePoint
from benchmarks.tuning.measure import Point, Trial
from modelrepo.serving import ServingConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class SimModel:
    cores: int = 2
    fixed_ms: float = 4.0  # per batch
    per_image_ms: float = 2.0
    thread_scaling: float = 0.8  # speed-up of t threads: t ** thread_scaling
    overhead_ms: float = 1.0  # per request, outside compute
    delay_weight: float = 0.5  # share of the queue delay a request pays
    preferred_weight: float = 0.0  # ms saved per preferred size (0: no effect)

    def threads(self, c: ServingConfig) -> int:
        return c.intra_op_threads or self.cores

    def compute_ms(self, batch: int, threads: int) -> float:
        return (self.fixed_ms + self.per_image_ms * batch) / threads**self.thread_scaling

    def _share(self, c: ServingConfig) -> float:
        return max(1.0, c.instance_count * self.threads(c) / self.cores)

    def capacity(self, c: ServingConfig) -> float:
        """Images/s at saturation (every batch full)."""
        b = c.max_batch_size
        return c.instance_count * b * 1e3 / (self.compute_ms(b, self.threads(c)) * self._share(c))

    def floor_ms(self, c: ServingConfig) -> float:
        """p99 at a vanishing load: wait behind one full batch, then run alone."""
        t, share = self.threads(c), self._share(c)
        return max(
            0.1,
            self.overhead_ms
            + share * (self.compute_ms(1, t) + self.compute_ms(c.max_batch_size, t))
            + c.max_queue_delay_us / 1e3 * self.delay_weight
            - self.preferred_weight * len(c.preferred_batch_sizes),
        )

    def p99_ms(self, c: ServingConfig, rate: float, capacity: float) -> float:
        return self.floor_ms(c) / (1 - rate / capacity) if rate < capacity else math.inf

    def true_rate(self, c: ServingConfig, target_ms: float) -> float:
        """The rate whose p99 equals the target (0 if even an idle server misses it)."""
        return max(0.0, self.capacity(c) * (1 - self.floor_ms(c) / target_ms))

    def curve(self, threads: list[int], sizes: list[int]) -> list[CurvePoint]:
        return [CurvePoint(t, b, self.compute_ms(b, t)) for t in threads for b in sorted(sizes)]


@dataclass
class SimProbe:
    """``Probe`` on ``SimModel``: each level costs ``seconds`` of the fake clock."""

    model: SimModel
    clock: FakeClock = field(default_factory=FakeClock)
    noise: float = 0.0  # relative standard deviation of capacity per level
    seconds: float = 3.0
    seed: int = 0
    log: list[tuple[ServingConfig, str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.candidate = ServingConfig()

    def _capacity(self) -> float:
        return self.model.capacity(self.candidate) * (1 + self.noise * self.rng.standard_normal())

    def _point(self, mode: str, level: float, **kw: float) -> Point:
        self.clock.now += self.seconds
        self.log.append((self.candidate, mode, level))
        return Point(mode=mode, level=level, seconds=self.seconds, **kw)

    def configure(self, candidate: ServingConfig) -> None:
        self.candidate = candidate
        self.log.append((candidate, "configure", 0))

    def closed(self, concurrency: int) -> Point:
        cap = self._capacity()
        idle = self.model.overhead_ms + self.model.compute_ms(1, self.model.threads(self.candidate))
        latency = max(idle, concurrency * 1e3 / cap)  # Little's law once saturated
        return self._point(
            "closed",
            concurrency,
            throughput=concurrency * 1e3 / latency,
            p50_ms=latency,
            p99_ms=max(1.5 * latency, self.model.floor_ms(self.candidate)),
            requests=int(self.seconds * concurrency * 1e3 / latency),
            batching_efficiency=min(float(self.candidate.max_batch_size), concurrency),
        )

    def open(self, rate: float) -> Point:
        cap = self._capacity()
        if rate >= cap:  # overloaded: the queue fills and requests are refused
            return self._point(
                "open", rate, throughput=cap, p50_ms=500.0, p99_ms=5000.0,
                requests=int(cap * self.seconds), rejected=int((rate - cap) * self.seconds) + 1,
            )  # fmt: skip
        p99 = self.model.p99_ms(self.candidate, rate, cap)
        return self._point(
            "open", rate, throughput=rate, p50_ms=p99 / 2, p99_ms=p99,
            requests=int(rate * self.seconds), batching_efficiency=1 + rate / cap,
        )  # fmt: skip


@dataclass
class TableMeasure:
    """``Measure`` straight from a rate per candidate (for the decision rules)."""

    rate_of: object  # Callable[[ServingConfig], float]
    noise: float = 0.0
    seed: int = 0
    calls: list[ServingConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, candidate: ServingConfig) -> Trial:
        self.calls.append(candidate)
        rate = self.rate_of(candidate) * (1 + self.noise * self.rng.standard_normal())
        peak = Point("closed", 8, rate * 1.2, 5.0, 9.0, 100, seconds=1.0)
        probe = Point("open", rate, rate, 5.0, 9.0, 100, seconds=1.0)
        return Trial([peak], [probe] if rate > 0 else [], max(rate, 0.0), 0.01)
