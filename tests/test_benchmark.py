"""The benchmark's statistics and a tiny real run (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.latency import BenchCfg, benchmark, parse_args, speedups, write
from benchmarks.stats import summarize


def test_percentiles_and_throughput_on_known_timings() -> None:
    stats = summarize([i / 1000 for i in range(1, 101)], batch_size=4)  # 1..100 ms
    assert stats.runs == 100 and stats.min_ms == pytest.approx(1) and stats.max_ms == 100
    assert stats.p50_ms == pytest.approx(50.5) and stats.p99_ms == pytest.approx(99.01)
    assert stats.throughput == pytest.approx(4 * 1000 / 50.5)


def test_empty_timings_are_an_error() -> None:
    with pytest.raises(ValueError, match="no timed runs"):
        summarize([], 1)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--backends", "tensorflow"])


def test_tiny_run_writes_results(tmp_path: Path) -> None:
    cfg = BenchCfg(
        models=("lenet",),
        backends=("torch", "onnxruntime"),
        batch_sizes=(1, 4),
        threads=1,
        warmup=1,
        min_runs=2,
        seconds=0.0,
        repository=tmp_path / "repo",
        out=tmp_path / "out",
    )
    rows = benchmark(cfg, log=lambda _: None)
    assert [(r["backend"], r["batch"]) for r in rows] == [
        ("torch", 1),
        ("onnxruntime", 1),
        ("torch", 4),
        ("onnxruntime", 4),
    ]
    assert all(r["top1_matches_first_backend"] and r["runs"] >= 2 for r in rows)
    write(rows, cfg.out, {"cpu": "test"})
    data = json.loads((cfg.out / "latency.json").read_text())
    assert data["machine"]["cpu"] == "test" and len(data["results"]) == 4
    assert (cfg.out / "latency.csv").read_text().count("\n") == 5
    assert len(speedups(rows)) == 2
