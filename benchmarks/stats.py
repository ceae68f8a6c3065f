"""Latency statistics, as onnxruntime's benchmark helper reports them."""

from __future__ import annotations

from dataclasses import dataclass

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
