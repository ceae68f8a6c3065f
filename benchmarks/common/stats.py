"""Latency statistics, as onnxruntime's benchmark helper reports them.

``summarize`` turns one timed window into percentiles; ``combine`` folds the
windows of several repeats into medians with their min/max spread, which is
the noise figure the reports show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # images per second at this batch size


def summarize(seconds: list[float], batch_size: int) -> LatencyStats:
    """Per-run wall times (seconds) -> milliseconds percentiles and images/s."""
    if not seconds:
        raise ValueError("no timed runs to summarize")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return LatencyStats(
        runs=len(ms),
        mean_ms=float(ms.mean()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        throughput=batch_size * 1e3 / float(p50),
    )


def combine(repeats: list[LatencyStats]) -> dict:
    """Medians over repeats of each figure; min/max of the p50s and throughputs.

    ``spread_pct`` = (max p50 - min p50) / median p50: how far the repeats
    disagree, i.e. how much of a difference between two rows is noise.
    """
    if not repeats:
        raise ValueError("no repeats to combine")
    rows = [asdict(r) for r in repeats]

    def med(key: str) -> float:
        return float(np.median([r[key] for r in rows]))

    p50s = [r.p50_ms for r in repeats]
    thr = [r.throughput for r in repeats]
    p50 = med("p50_ms")
    return {
        "repeats": len(repeats),
        "runs": sum(r.runs for r in repeats),
        "p50_ms": p50,
        "p90_ms": med("p90_ms"),
        "p95_ms": med("p95_ms"),
        "p99_ms": med("p99_ms"),
        "mean_ms": med("mean_ms"),
        "min_ms": min(r.min_ms for r in repeats),
        "max_ms": max(r.max_ms for r in repeats),
        "p50_ms_lo": min(p50s),
        "p50_ms_hi": max(p50s),
        "spread_pct": 100 * (max(p50s) - min(p50s)) / p50 if p50 > 0 else 0.0,
        "throughput": med("throughput"),
        "throughput_lo": min(thr),
        "throughput_hi": max(thr),
    }
