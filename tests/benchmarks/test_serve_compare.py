"""benchmarks/serve_vs_inprocess.py: its variants, the paired arithmetic, the CPU split
per image, and one short real run (a server on localhost, ONNX Runtime in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MODEL = "lenet5"


def test_server_variants_split_environment_from_flags() -> None:
    from benchmarks.comparison.cli import split_variant

    assert split_variant("") == ({}, [])
    env, flags = split_variant("MALLOC_ARENA_MAX=2 X=a=b --max-queue-delay-us 0 --y=1")
    assert env == {"MALLOC_ARENA_MAX": "2", "X": "a=b"}
    assert flags == ["--max-queue-delay-us", "0", "--y=1"]
    with pytest.raises(SystemExit):
        split_variant("1BAD=2 --x")


@pytest.mark.parametrize(
    "variant, named",
    [("--instance-count 0", "--instance-count 0"), ("--intra-op-threads x", "invalid int")],
)
def test_a_bad_server_layout_is_refused_before_any_timing(variant: str, named: str, capsys) -> None:
    from benchmarks.comparison.cli import layout_of, parse_args

    assert layout_of(["--instance-count", "2", "--intra-op-threads=1", "--x"], 1, 2) == (2, 1)
    assert layout_of([], 3, 2) == (3, 2)
    with pytest.raises(SystemExit):
        parse_args(["--repository", "r", "--server-args", variant])
    assert named in capsys.readouterr().err


def _inproc(p50: float, thr: float) -> dict:
    """An in-process slice (at 199% of a core)."""
    return {"p50_ms": p50, "throughput": thr, "other_cpu_pct": 0.0, "own_cpu_pct": 199.0}


def _server_slice(p50: float, thr: float) -> dict:
    """A server slice: 180% of a core, 30% of it the event loop, on a machine at 190%."""
    return {
        "latency": {"p50_ms": p50, "p99_ms": p50 * 2},
        "throughput": thr,
        "error_count": 0,
        "client_cpu_pct": 5.0,
        "server_cpu_pct": 180.0,
        "server_loop_cpu_pct": 30.0,
        "machine_cpu_pct": 190.0,
        "other_cpu_pct": 0.0,
        "server": {"batching_efficiency": 4.0, "compute_ms_mean": 10.0},
    }


def _level(ref: tuple, srv: tuple, ref_after: tuple | None = None) -> dict:
    """A server slice between two in-process ones (the same, unless ``ref_after``)."""
    return {
        "before": _inproc(*ref),
        "server": _server_slice(*srv),
        "after": _inproc(*(ref_after or ref)),
    }


def test_pairs_straddling_a_speed_change_are_left_out() -> None:
    from benchmarks.comparison.compare import paired, summarize_variant

    rounds = [
        {1: _level((4.0, 240), (5.5, 130)), 8: _level((16.0, 250), (16.0, 200))},
        {1: _level((4.0, 240), (6.0, 130), (7.0, 140)), 8: _level((16, 250), (16, 150), (28, 140))},
        {1: _level((4.2, 238), (5.1, 130)), 8: _level((16.0, 240), (16.0, 180))},
    ]
    stable, every, unstable = paired(
        [r[1] for r in rounds], "p50_ms", lambda s: s["latency"]["p50_ms"], lambda v, r: v - r
    )
    assert stable == pytest.approx([1.5, 0.9]) and len(every) == 3 and unstable == 1
    for r, own in zip(rounds, [(260, 262), (255, 150), (250, 250)], strict=True):
        r[8]["layout_before"], r[8]["layout_after"] = (_inproc(10.0, t) for t in own)
    summary = summarize_variant("--x 1", rounds, best=4, cores=2)
    own = summary["layout_reference"]  # round 2 straddles a speed change here too: left out
    assert own["ratio"] == pytest.approx((200 / 261 + 180 / 250) / 2)
    assert own["pairs"] == {"stable": 2, "unstable": 1} and not own["target_met"]
    assert own["throughput"] == pytest.approx(250)  # median of 261, 202.5, 250
    # ... and the compute CPU against it (in-process slices at 199% of a core)
    assert summary["cpu_per_image"]["layout_reference_ms"] == pytest.approx(1990 / 250)
    assert summary["cpu_per_image"]["compute_over_layout_reference"] == pytest.approx(
        (1500 / 200) / ((1990 / 260 + 1990 / 262) / 2) - 1
    )
    assert summary["p50_overhead_ms"] == pytest.approx(1.2)  # median of the 2 stable pairs
    assert summary["latency_pairs"] == {"stable": 2, "unstable": 1}
    assert summary["throughput_ratio"] == pytest.approx((200 / 250 + 180 / 240) / 2)
    assert summary["concurrency"] == 8 and summary["batching_efficiency"] == 4.0
    assert not summary["latency_target_met"] and not summary["throughput_target_met"]
    assert summary["noisy"] == []
    # CPU per image at c=8: 10 x %core / img/s; in-process slices ran at 199% of a core
    cpu = summary["cpu_per_image"]
    assert cpu["inprocess_ms"] == pytest.approx(1990 / 240)  # 1990/250, mean of /250 /140, /240
    assert cpu["server_ms"] == pytest.approx(1800 / 180)  # 180% at 200, 150, 180 img/s
    assert cpu["server_loop_ms"] == pytest.approx(300 / 180)
    assert cpu["server_other_threads_ms"] == pytest.approx(1500 / 180)
    assert cpu["compute_over_inprocess"] == pytest.approx((1500 / 200) / (1990 / 250) - 1)
    assert cpu["client_ms"] == pytest.approx(50 / 180)
    assert cpu["idle_pct"] == pytest.approx(5.0)  # 190% of 2 cores used


def test_serve_vs_inprocess_end_to_end_with_the_servers_own_layout(
    serve_repo: Path, tmp_path: Path
) -> None:
    """The whole comparison on LeNet, briefly: a default server, and one with two
    single-thread instances; both are also compared with two single-thread sessions in
    process (the second's own layout, the default's steadier reference), swept once."""
    from benchmarks.comparison import cli as serve_vs_inprocess

    out = tmp_path / "svi"
    argv = ["--repository", str(serve_repo), "--model", MODEL, "--out", str(out), "--threads", "2",
            "--batch-sizes", "1,2", "--inproc-seconds", "0.2", "--sweep-passes", "1",
            "--concurrency", "1,4", "--rounds", "1", "--seconds", "0.6", "--warmup", "0.2",
            "--quiet-wait", "0", "--inputs", "stream-shm", "--server-args", "",
            "--server-args", "--instance-count 2 --intra-op-threads 1"]  # fmt: skip
    assert serve_vs_inprocess.main(argv) == 0
    data = json.loads((out / "serve_vs_inprocess.json").read_text())
    assert set(data["inprocess_sweeps"]) == {"1x2", "2x1"}
    two = data["inprocess_sweeps"]["2x1"][0]["passes"][0]
    assert two["sessions"] == 2 and two["threads"] == 1 and two["runs"] >= 20
    default, layout = data["summary"]
    for summary, own in ((default, False), (layout, True)):
        second = summary["layout_reference"]
        assert second["name"] == "2x1" and second["server_layout"] is own
        assert second["best_batch"] in (1, 2) and second["throughput"] > 0
        assert second["ratio"] > 0 and sum(second["pairs"].values()) == 1
    assert default["layout_reference"]["best_batch"] == layout["layout_reference"]["best_batch"]
    for variant in data["variants"]:
        top = variant["rounds"][0]["4"]
        assert top["layout_before"]["sessions"] == 2 and top["before"]["sessions"] == 1
    for summary in data["summary"]:
        assert summary["levels"]["4"]["errors"] == 0 and summary["throughput_ratio"] > 0
        cpu = summary["cpu_per_image"]
        assert cpu["inprocess_ms"] > 0 and 0 <= cpu["server_loop_ms"] <= cpu["server_ms"]
