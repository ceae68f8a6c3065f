"""The in-process benchmark: statistics, budgets, a tiny real run and its report files.

No timing assertions: figures are checked for consistency (p50 <= p99, the
spread brackets the median), never for speed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common.machine import gpu_reason
from benchmarks.common.stats import LatencyStats, combine, summarize
from benchmarks.inprocess.backends import BACKENDS, skip_reason
from benchmarks.inprocess.cli import parse_args, run
from benchmarks.inprocess.timing import BenchCfg, Budget, _compare, time_window
from benchmarks.report import latency as report

ROW_KEYS = {
    "model", "family", "year", "params", "gmacs", "input", "weights", "trained",
    "published_top1", "onnx_mb", "backend", "precision", "batch", "status", "reason",
    "threads", "detail", "repeats", "runs", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms",
    "min_ms", "max_ms", "p50_ms_lo", "p50_ms_hi", "spread_pct", "throughput", "throughput_lo",
    "throughput_hi", "peak_mb", "model_mb", "reference", "top1_agreement", "max_rel_err",
    "top1_mismatch", "measured_top1", "eval_set", "other_cpu_pct",
}  # fmt: skip


def test_percentiles_and_throughput_on_known_timings() -> None:
    stats = summarize([i / 1000 for i in range(1, 101)], batch_size=4)  # 1..100 ms
    assert stats.runs == 100 and stats.min_ms == pytest.approx(1) and stats.max_ms == 100
    assert stats.p50_ms == pytest.approx(50.5) and stats.p99_ms == pytest.approx(99.01)
    assert stats.p90_ms == pytest.approx(90.1) and stats.p95_ms == pytest.approx(95.05)
    assert stats.throughput == pytest.approx(4 * 1000 / 50.5)


def test_repeats_combine_into_medians_and_spread() -> None:
    windows = [summarize([t / 1000] * 5, batch_size=2) for t in (10, 12, 20)]
    out = combine(windows)
    assert out["repeats"] == 3 and out["runs"] == 15
    assert out["p50_ms"] == pytest.approx(12) and out["p99_ms"] == pytest.approx(12)
    assert (out["p50_ms_lo"], out["p50_ms_hi"]) == pytest.approx((10, 20))
    assert out["spread_pct"] == pytest.approx(100 * 10 / 12)
    assert out["throughput"] == pytest.approx(2000 / 12)
    assert (out["throughput_lo"], out["throughput_hi"]) == pytest.approx((100, 200))


def test_empty_timings_are_an_error() -> None:
    with pytest.raises(ValueError, match="no timed runs"):
        summarize([], 1)
    with pytest.raises(ValueError, match="no repeats"):
        combine([])


def test_windows_stop_on_the_count_or_the_hard_limit() -> None:
    calls: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x

    x = np.zeros((3, 1))
    assert len(time_window(run, x, Budget(seconds=0, min_runs=4, max_seconds=60))) == 4
    assert len(calls) == 5 and set(calls) == {3}  # one untimed run first
    assert len(time_window(run, x, Budget(seconds=0, min_runs=10**6, max_seconds=0))) == 1


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--backends", "tensorflow"], "onnxruntime-tensorrt"),
        (["--precisions", "int4"], "fp16"),
        (["--models", "resnet5O"], "Known models"),
        (["--batch-sizes", "0"], ">= 1"),
        (["--batch-sizes", "1,x"], "comma-separated"),
    ],
)
def test_bad_arguments_are_named(argv: list[str], named: str, capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert named in capsys.readouterr().err


def test_output_comparison_flags_a_changed_top1() -> None:
    ref = np.array([[0.0, 1.0, 0.5], [2.0, 0.0, 1.0]], dtype=np.float32)
    same = _compare(ref + 0.25, ref)
    assert same["top1_agreement"] == 1.0 and not same["top1_mismatch"]
    assert same["max_rel_err"] == pytest.approx(0.25 / 2)
    moved = _compare(np.array([[0.0, 1.0, 0.5], [0.0, 0.0, 3.0]], dtype=np.float32), ref)
    assert moved["top1_agreement"] == 0.5 and moved["top1_mismatch"]
    row = {"model": "m", "backend": "onnxruntime", "precision": "int8", "status": "ok",
           "reference": "torch fp32", "eval_set": "2 images", **moved}  # fmt: skip
    (line,) = report.mismatch_lines([row])
    assert "m, ONNX Runtime int8" in line and "50.0% of 2 images" in line


@pytest.fixture(scope="module")
def tiny(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchCfg, list]:
    """LeNet (trained on digits), every backend, fp32 + int8, batches 1 and 4, 2 repeats."""
    cfg = BenchCfg(
        models=("lenet",),
        backends=BACKENDS,
        precisions=("fp32", "int8"),
        batch_sizes=(1, 4),
        threads=1,
        budget=Budget(seconds=0.0, min_runs=3, max_seconds=2.0, warmup=1, repeats=2),
        repository=serve_repo,
        out=tmp_path_factory.mktemp("bench-out"),
    )
    return cfg, run(cfg)


def test_every_combination_is_measured_or_skipped_with_a_reason(tiny) -> None:
    cfg, rows = tiny
    ok = {(r["backend"], r["precision"], r["batch"]) for r in rows if r["status"] == "ok"}
    other = [(r["backend"], r["precision"]) for r in rows if r["status"] != "ok"]
    for backend in BACKENDS:
        for precision in cfg.precisions:
            measured = {(backend, precision, b) for b in cfg.batch_sizes} <= ok
            assert measured != ((backend, precision) in other), (backend, precision)
    assert {("torch", "fp32"), ("onnxruntime", "fp32")} <= {k[:2] for k in ok}
    skipped = {(r["backend"], r["precision"]): r["reason"] for r in rows if r["status"] != "ok"}
    assert all(reason for reason in skipped.values())
    assert skipped[("torch", "int8")] == skip_reason("torch", "int8")
    if gpu_reason() is not None:  # this machine has no GPU: every GPU backend says why
        for backend in ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"):
            assert skipped[(backend, "fp32")], backend


def test_rows_hold_consistent_figures(tiny) -> None:
    _, rows = tiny
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["repeats"] == 2 and r["runs"] >= 2 * 3
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["p50_ms_lo"] <= r["p50_ms"] <= r["p50_ms_hi"]
        assert r["throughput_lo"] <= r["throughput"] <= r["throughput_hi"]
        assert r["params"] == 61_706 and r["model"] == "lenet5" and r["trained"]
        assert r["peak_mb"] is None or r["peak_mb"] >= 0
        assert r["model_mb"] > 0 and r["reference"] == "torch fp32"
        # LeNet trained on digits: every fp32 backend scores its held-out images alike.
        assert r["measured_top1"] >= (0.95 if r["precision"] == "fp32" else 0.9)
        assert "held-out" in r["eval_set"]
    fp32 = [r for r in ok if r["precision"] == "fp32"]
    assert all(r["top1_agreement"] == 1.0 and not r["top1_mismatch"] for r in fp32)
    assert len({r["measured_top1"] for r in fp32}) == 1
    ups = report.speedups(rows)
    assert {(s["backend"], s["precision"], s["batch"]) for s in ups} >= {
        ("onnxruntime", "fp32", 1),
        ("onnxruntime", "fp32", 4),
    }


def test_report_files_and_charts(tiny) -> None:
    cfg, rows = tiny
    data = json.loads((cfg.out / "latency.json").read_text())
    assert data["results"] == json.loads(json.dumps(rows))
    assert data["machine"]["cores"] >= 1 and data["machine"]["threads"] == 1
    assert data["machine"]["libraries"]["onnxruntime"]
    with open(cfg.out / "latency.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    md = (cfg.out / "latency.md").read_text()
    for heading in ("## Batch 1", "## Batch 4", "## Skipped", "## Output comparison", "## Method"):
        assert heading in md
    assert "lenet5" in md and "ORT CUDA" in md and data["machine"]["cpu"] in md
    for name in ("latency_vs_gmacs", "throughput_vs_params", "speedup"):
        png = cfg.out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name}.png)" in md
    assert not (cfg.out / "accuracy_vs_latency.png").exists()  # LeNet has no ImageNet top-1


def test_serve_vs_inprocess_section(tmp_path: Path) -> None:
    from benchmarks.comparison.compare import summarize_variant

    def level(ref: float, srv: float) -> dict:
        inproc = {"p50_ms": 4.0, "throughput": ref, "other_cpu_pct": 0.0}
        server = {"latency": {"p50_ms": 5.0, "p99_ms": 9.0}, "throughput": srv,
                  "error_count": 0, "client_cpu_pct": 5.0, "server_cpu_pct": 150.0,
                  "server": {"batching_efficiency": 3.5}}  # fmt: skip
        return {"before": inproc, "server": server, "after": inproc}

    rounds = [{1: level(250, 180), 8: level(250, 230)}, {1: level(240, 170), 8: level(240, 228)}]
    summary = summarize_variant("", rounds, best=8)
    path = tmp_path / "serve_vs_inprocess.json"
    path.write_text(json.dumps({"model": "mobilenet_v2", "threads": 2, "machine": {},
                                "summary": [summary]}))  # fmt: skip
    text = "\n".join(report.serve_vs_inprocess_section(path))
    assert f"{summary['throughput_ratio']:.3f}×" in text and "(8 clients)" in text
    assert "| (defaults) |" in text and "| met |" in text and summary["throughput_target_met"]
    assert "CPU milliseconds per image" not in text  # rows without CPU figures: no such table
    cpu = {"inprocess_ms": 8.0, "server_ms": 9.5, "server_loop_ms": 1.25,
           "server_other_threads_ms": 8.25, "compute_over_inprocess": 0.03125,
           "client_ms": 0.5, "idle_pct": 4.0}  # fmt: skip
    path.write_text(json.dumps({"summary": [{**summary, "cpu_per_image": cpu}]}))
    text = "\n".join(report.serve_vs_inprocess_section(path))
    assert "| (defaults) | in the request | 8.00 | 9.50 | 1.25 | 8.25 (+3%) | 0.50 | 4% |" in text
    assert "| 3.50 | - | +1.00 ms |" in text  # no second layout measured
    own = {"name": "2x1", "best_batch": 2, "throughput": 300.0, "ratio": 0.95}
    path.write_text(json.dumps({"summary": [{**summary, "own_layout": own}]}))  # before rename
    text = "\n".join(report.serve_vs_inprocess_section(path))
    assert "| 3.50 | 0.950× (2x1, the server's at b=2, 300.0 img/s) | +1.00 ms |" in text
    steady = {**own, "server_layout": False, "ratio": 0.8}
    path.write_text(json.dumps({"summary": [{**summary, "layout_reference": steady}]}))
    text = "\n".join(report.serve_vs_inprocess_section(path))
    assert "| 3.50 | 0.800× (2x1 at b=2, 300.0 img/s) | +1.00 ms |" in text
    assert report.serve_vs_inprocess_section(tmp_path / "absent.json") == []


def test_the_batch1_summary_names_every_model_and_speedup() -> None:
    def row(backend: str, p50: float) -> dict:
        stats = combine([LatencyStats(3, p50, p50, p50, p50, p50, p50, p50, 1000 / p50)])
        return {"model": "m", "year": 2018, "params": 3.5e6, "gmacs": 0.3, "status": "ok",
                "published_top1": 72.0, "measured_top1": None, "backend": backend,
                "precision": "fp32", "batch": 1, **stats}  # fmt: skip

    lines = report.summary_table([row("torch", 20.0), row("onnxruntime", 5.0)], batch=1)
    assert "ONNX Runtime speed-up" in lines[0] and "| 4.00× |" in lines[2]
