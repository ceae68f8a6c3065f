"""Which candidates to measure, when to stop, and which one wins.

The search is a coordinate climb from the curve's seed, not a grid: the
default configuration and the seed are measured first, then each dimension
(instances x threads, max_batch_size, queue delay, preferred sizes) is walked
from the current best, one step at a time in a direction, and a direction is
abandoned as soon as a step fails to beat the best by more than the noise.
The finalists (always the default, so the comparison is within one run, the
simplest candidate within noise of the best, and the best by rate: ``top_k``
besides the default) are then measured again, interleaved, and the spread
between those repeats is the run's noise figure. Candidates within noise of
the best are tied, and the simplest of them wins. A time budget bounds it
all: exploring stops early enough to leave time for the re-measurement.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.tuning.candidates import DIMENSIONS, Space, simplicity
from benchmarks.tuning.measure import Measure, Measurement
from modelrepo.serving import ServingConfig


@dataclass(frozen=True)
class SearchSettings:
    target_p99_ms: float
    budget_s: float = 840.0  # the whole search, in-process curve excluded
    top_k: int = 3  # finalists besides the default
    repeats: int = 2  # trials of every finalist
    noise_pct: float = 5.0  # the least difference counted as real
    max_candidates: int = 30

    def __post_init__(self) -> None:
        if self.budget_s <= 0 or self.top_k < 1 or self.repeats < 1 or self.max_candidates < 2:
            raise ValueError(
                "budget_s must be > 0, top_k and repeats >= 1, max_candidates >= 2; got "
                f"{self.budget_s}, {self.top_k}, {self.repeats}, {self.max_candidates}"
            )
        if self.noise_pct < 0:
            raise ValueError(f"noise_pct {self.noise_pct}: must be >= 0")


class SearchProgress:
    """What the search reports; the command line draws a progress bar from it."""

    def log(self, line: str) -> None: ...

    def plan(self, trials: int) -> None:
        """``trials`` trials expected in all (revised as the search goes)."""

    def start(self, candidate: ServingConfig, phase: str) -> None: ...

    def done(self, measurement: Measurement, phase: str) -> None: ...


@dataclass
class SearchResult:
    target_p99_ms: float
    measurements: list[Measurement]  # every candidate, in the order first measured
    default: Measurement
    winner: Measurement | None  # None: no candidate met the target
    best: Measurement  # the highest median rate
    tied: list[Measurement]  # within noise of the best (the best included)
    noise_pct: float
    reason: str
    seconds: float
    stopped: str | None = None  # why exploring ended before the climb finished
    notes: list[str] = field(default_factory=list)

    @property
    def significant(self) -> bool:
        """Whether the winner beats the default by more than the noise."""
        return self.winner is not None and not within_noise(
            self.winner, self.default, self.noise_pct
        )

    def verdict(self) -> str:
        """The default's Server-scenario rate vs the tuned one, with spreads."""
        if self.winner is None:
            return self.reason
        d, w = self.default, self.winner
        line = (
            f"Server scenario at p99 <= {self.target_p99_ms:g} ms: default {fmt_rate(d)} req/s"
            f" -> tuned {fmt_rate(w)} req/s"
        )
        if w.candidate == d.candidate:
            return line + " (the default configuration is the winner: nothing to change)"
        if d.rate <= 0:
            return line + " (the default meets the target at no rate tried)"
        ratio = w.rate / d.rate
        verdict = (
            f"{ratio:.2f}x, beyond the {self.noise_pct:.0f}% noise"
            if self.significant
            else f"{ratio:.2f}x, within the {self.noise_pct:.0f}% noise: no real gain"
        )
        return f"{line} ({verdict})"


def fmt_rate(m: Measurement) -> str:
    lo, hi = m.rate_range
    if len(m.trials) < 2:
        return f"{m.rate:.1f} (1 trial)"
    return f"{m.rate:.1f} [{lo:.1f}-{hi:.1f}, {len(m.trials)} trials]"


def within_noise(a: Measurement, b: Measurement, noise_pct: float) -> bool:
    """Rates closer than the noise (or the bisection's resolution) cannot be told apart."""
    if a.rate <= 0 or b.rate <= 0:
        return a.rate == b.rate
    noise = max(noise_pct, a.resolution_pct, b.resolution_pct)
    return abs(a.rate - b.rate) <= noise / 100 * max(a.rate, b.rate)


def _better(m: Measurement, best: Measurement, noise_pct: float) -> bool:
    if best.rate > 0 or m.rate > 0:
        return m.rate > best.rate * (1 + noise_pct / 100)
    # Neither meets the target anywhere: climb towards the lowest p99.
    mine, theirs = m.best_p99_ms, best.best_p99_ms
    return mine is not None and (theirs is None or mine < theirs * (1 - noise_pct / 100))


def _rank_key(m: Measurement) -> tuple:
    return (m.rate, m.peak_throughput, -(m.best_p99_ms or float("inf")))


class _Run:
    """The bookkeeping of one search: measurements, durations, the budget."""

    def __init__(self, measure: Measure, settings: SearchSettings, clock, progress) -> None:
        self.measure, self.settings, self.clock, self.progress = measure, settings, clock, progress
        self.start = clock()
        self.found: dict[ServingConfig, Measurement] = {}
        self.durations: list[float] = []
        self.stopped: str | None = None  # why exploring ended early

    def trial(self, candidate: ServingConfig, phase: str) -> Measurement:
        self.progress.start(candidate, phase)
        began = self.clock()
        trial = self.measure(candidate)
        self.durations.append(self.clock() - began)
        m = self.found.setdefault(candidate, Measurement(candidate))
        m.trials.append(trial)
        self.progress.done(m, phase)
        return m

    def get(self, candidate: ServingConfig, phase: str) -> Measurement:
        if candidate in self.found:
            return self.found[candidate]
        return self.trial(candidate, phase)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def affordable(self, trials_after: int) -> bool:
        """Room for one more trial and then ``trials_after`` more, by the mean so far."""
        est = statistics.fmean(self.durations) if self.durations else 0.0
        return self.elapsed() + est * (1 + trials_after) <= self.settings.budget_s

    def allowed(self) -> bool:
        """Room for one more candidate and the re-measurement of the finalists after it."""
        settings = self.settings
        finalists = min(settings.top_k + 1, len(self.found) + 1)
        if len(self.found) >= settings.max_candidates:
            self.stopped = f"stopped exploring at {settings.max_candidates} candidates"
        elif not self.affordable(finalists * (settings.repeats - 1)):
            self.stopped = (
                f"stopped exploring after {self.elapsed():.0f} s to keep the re-measurement "
                f"inside the {settings.budget_s:.0f} s budget"
            )
        return self.stopped is None


def search(
    measure: Measure,
    space: Space,
    default: ServingConfig,
    settings: SearchSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    progress: SearchProgress | None = None,
) -> SearchResult:
    progress = progress or SearchProgress()
    run = _Run(measure, settings, clock, progress)
    progress.plan(2 + 2 * len(DIMENSIONS) + (settings.top_k + 1) * (settings.repeats - 1))
    _climb(run, space, default)
    queue = _remeasure_queue(run, default)
    progress.plan(len(run.durations) + len(queue))
    for i, candidate in enumerate(queue):
        if not run.affordable(0):
            cut = f"re-measurement cut by the budget ({len(queue) - i} trials left out)"
            run.stopped = f"{run.stopped}; {cut}" if run.stopped else cut
            break
        run.trial(candidate, "re-measure")
    measured = list(run.found.values())
    spreads = [m.spread_pct for m in measured if m.spread_pct is not None]
    noise = max([settings.noise_pct, *spreads])
    return _decide(settings, measured, run.found[default], default, noise, run, run.stopped)


def _climb(run: _Run, space: Space, default: ServingConfig) -> None:
    """The default, the seed, then each dimension in turn from the best so far."""
    noise = run.settings.noise_pct
    best = run.trial(default, "default")
    if space.seed != default and run.allowed():
        seed = run.trial(space.seed, "seed")
        best = seed if _better(seed, best, noise) else best
    for dim in DIMENSIONS:
        if run.stopped:
            break
        options = space.options(dim, best.candidate)
        if dim in ("parallelism", "preferred_batch_sizes"):  # unordered: try each
            for option in options:
                if option != best.candidate and run.allowed():
                    m = run.get(option, dim)
                    best = m if _better(m, best, noise) else best
            continue
        best = _walk(run, dim, options, best)


def _walk(run: _Run, dim: str, options: list[ServingConfig], best: Measurement) -> Measurement:
    """Step along an ordered dimension while each step beats the best by more than noise."""
    noise = run.settings.noise_pct
    start = options.index(best.candidate)
    for step in (1, -1):  # up first; down only if up did not help
        j, moved = start + step, False
        while 0 <= j < len(options) and run.allowed():
            m = run.get(options[j], dim)
            if not _better(m, best, noise):
                break
            best, moved, j = m, True, j + step
        if moved or run.stopped:
            break
    return best


def _remeasure_queue(run: _Run, default: ServingConfig) -> list[ServingConfig]:
    """The finalists' further trials: the default, the simplest of those tied with the
    best, and the best by rate; interleaved, the order rotated per round."""
    settings, noise = run.settings, run.settings.noise_pct
    ranked = sorted(run.found.values(), key=_rank_key, reverse=True)
    finalists = [m.candidate for m in ranked if m.rate > 0][: settings.top_k]
    tied = [m.candidate for m in ranked if m.rate > 0 and within_noise(m, ranked[0], noise)]
    simplest = sorted(tied, key=lambda c: simplicity(c, default))[:1]  # may win the tie-break
    finalists = list(dict.fromkeys([default, *simplest, *finalists]))[: settings.top_k + 1]
    rounds = [
        finalists[r % len(finalists) :] + finalists[: r % len(finalists)]
        for r in range(settings.repeats - 1)
    ]
    return [c for order in rounds for c in order]


def _decide(
    settings: SearchSettings,
    measured: list[Measurement],
    default_m: Measurement,
    default: ServingConfig,
    noise: float,
    run: _Run,
    stopped: str | None,
) -> SearchResult:
    ranked = sorted(measured, key=_rank_key, reverse=True)
    best = ranked[0]
    target = settings.target_p99_ms
    if best.rate <= 0:
        lowest = min(
            (m for m in measured if m.best_p99_ms is not None),
            key=lambda m: m.best_p99_ms or 0.0,
            default=None,
        )
        seen = (
            f"; the lowest p99 measured was {lowest.best_p99_ms:.1f} ms ({lowest.candidate.label})"
            if lowest
            else ""
        )
        reason = (
            f"target not reachable: no configuration met p99 <= {target:g} ms at any Poisson "
            f"rate tried ({len(measured)} candidates){seen}; raise --p99-ms or use a smaller model"
        )
        return SearchResult(
            target, measured, default_m, None, best, [], noise, reason, run.elapsed(), stopped
        )
    tied = [m for m in ranked if within_noise(m, best, noise)]
    winner = min(tied, key=lambda m: simplicity(m.candidate, default))
    others = [m for m in ranked if m is not best]
    if len(tied) == 1:
        runner_up = (
            f", {best.rate / others[0].rate:.2f}x the next ({others[0].candidate.label})"
            if others and others[0].rate > 0
            else ""
        )
        reason = f"highest Server-scenario rate at p99 <= {target:g} ms{runner_up}"
    else:
        why = (
            "the simplest first: the default, then fewer instances, a smaller queue delay, "
            "the default batching sizes"
        )
        if winner is best:
            reason = (
                f"{len(tied)} candidates within the {noise:.0f}% noise of each other; the winner "
                f"has the highest rate and is also the simplest of them ({why})"
            )
        else:
            reason = (
                f"{len(tied)} candidates within the {noise:.0f}% noise of the highest rate "
                f"({best.candidate.label}: {best.rate:.1f} req/s); the winner is the simplest "
                f"of them ({why})"
            )
    return SearchResult(
        target, measured, default_m, winner, best, tied, noise, reason, run.elapsed(), stopped
    )
