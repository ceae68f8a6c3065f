"""The load generator (benchmarks/load.py and its modules): short smoke runs against a
real server, the command line with its report files, and the pure helpers."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.common import machine
from benchmarks.loadtest import cli as load
from benchmarks.loadtest import infer_requests, loadgen, photos, server_metrics
from benchmarks.report import load as load_report
from exporter.pipeline import ExportRequest, export_model
from protos import grpc_service_pb2 as pb
from tests.kit.serving import ServerProcess, start_server

MODEL = "lenet5"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("load-repo")
    # Random weights: what is computed does not matter here, and no training run.
    export_model(
        ExportRequest(model=MODEL, weights="random", repository=path), progress=lambda _: None
    )
    return path


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    srv = start_server(repo, "--model", MODEL, log_dir=tmp_path_factory.mktemp("load-log"))
    yield srv
    assert srv.terminate() == 0, srv.output()


def metrics_url(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.metrics_port}/metrics"


@pytest.fixture(scope="module")
def request_bytes(server: ServerProcess) -> bytes:
    info = infer_requests.model_info(server.url, MODEL)
    assert info.input_shape == (1, 32, 32) and info.max_batch_size >= 4
    return infer_requests.tensor_request(info, batch=1)


def check_consistent(result: dict, batch: int = 1) -> None:
    assert result["requests"] > 0, result
    assert result["error_count"] == 0 and result["errors"] == {}, result
    assert result["throughput"] > 0
    assert result["latency"]["runs"] == result["requests"]
    assert 0 < result["latency"]["p50_ms"] <= result["latency"]["p99_ms"]
    assert result["client_cpu_pct"] >= 0
    srv = result["server"]
    assert srv is not None, result.get("metrics_error")
    # The metrics window encloses the counted requests: every one of them was inferred.
    assert srv["inference_count"] >= result["requests"] * batch
    assert srv["requests_by_code"].get("OK", 0) >= result["requests"]
    assert set(srv["requests_by_code"]) == {"OK"}
    assert 1 <= srv["exec_count"] <= srv["inference_count"]
    assert srv["batching_efficiency"] >= 1
    assert srv["queue_ms_mean"] >= 0 and srv["compute_ms_mean"] > 0
    assert result["server_cpu_pct"] is not None and result["server_cpu_pct"] > 0
    # the event loop is one of the server's threads (5 points: one clock tick of slack)
    assert 0 <= result["server_loop_cpu_pct"] <= result["server_cpu_pct"] + 5


@pytest.mark.parametrize(
    "concurrency, shared, streaming",
    [(1, False, False), (4, False, False), (4, True, False), (1, False, True), (4, True, True)],
)
def test_closed_loop_against_a_real_server(
    server: ServerProcess, request_bytes: bytes, concurrency: int, shared: bool, streaming: bool
) -> None:
    result = loadgen.run_closed_loop(
        server.url,
        request_bytes,
        concurrency,
        seconds=1.0,
        warmup=0.3,
        metrics_url=metrics_url(server),
        model=MODEL,
        server_pid=server.proc.pid,
        shared_channel=shared,
        streaming=streaming,
    )
    assert result["mode"] == "closed" and result["concurrency"] == concurrency
    assert result["streaming"] is streaming
    assert result["channels"] == (1 if shared else concurrency)
    check_consistent(result)


def test_streaming_counts_failed_requests_and_keeps_the_stream(server: ServerProcess) -> None:
    """A stream answers a bad request with error_message and stays open: each is an error."""
    bad = pb.ModelInferRequest(model_name="no_such_model")
    bad.inputs.add(name="input", datatype="FP32", shape=[1, 1, 32, 32])
    bad.raw_input_contents.append(bytes(4096))
    result = loadgen.run_closed_loop(
        server.url, bad.SerializeToString(), 2, seconds=0.5, warmup=0.1, streaming=True
    )
    assert result["requests"] == 0 and result["error_count"] > 0
    assert set(result["errors"]) == {"STREAM_ERROR"}


def test_open_loop_at_a_low_rate(server: ServerProcess, request_bytes: bytes) -> None:
    result = loadgen.run_open_loop(
        server.url,
        request_bytes,
        rate=40,
        seconds=1.0,
        warmup=0.2,
        metrics_url=metrics_url(server),
        model=MODEL,
        server_pid=server.proc.pid,
    )
    assert result["mode"] == "open" and result["rate"] == 40
    assert result["client_overflow"] == 0
    assert result["sent"] == result["requests"]  # every request sent in the window answered
    assert result["send_lag_ms_p50"] >= 0
    check_consistent(result)


def test_encoded_images_in_batches_of_two(server: ServerProcess) -> None:
    pngs = []
    for shade in (0, 128, 255):
        buf = io.BytesIO()
        Image.new("L", (8, 8), shade).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    info = infer_requests.model_info(server.url, MODEL)
    requests = infer_requests.image_requests(info, pngs, batch=2)
    assert len(requests) == 2
    answer = infer_requests.check_request(server.url, requests[0])
    assert list(answer.outputs[0].shape) == [2, 10]
    result = loadgen.run_closed_loop(
        server.url,
        requests,
        2,
        seconds=0.7,
        warmup=0.2,
        batch_size=2,
        metrics_url=metrics_url(server),
        model=MODEL,
        server_pid=server.proc.pid,
    )
    check_consistent(result, batch=2)
    assert result["throughput"] == pytest.approx(2 * result["requests_per_s"])
    assert result["server"]["preprocess_ms_mean"] > 0


def test_shared_memory_inputs_under_load_and_cleaned_up(server: ServerProcess) -> None:
    info = infer_requests.model_info(server.url, MODEL)
    with infer_requests.shared_memory_request(server.url, info, batch=2) as request:
        assert len(request) < 300  # the tensor (8 kB) is not in the message
        region = pb.ModelInferRequest.FromString(request).inputs[0].parameters
        name = region["shared_memory_region"].string_param
        result = loadgen.run_closed_loop(
            server.url, request, 2, seconds=0.8, warmup=0.2, batch_size=2,
            metrics_url=metrics_url(server), model=MODEL, server_pid=server.proc.pid,
        )  # fmt: skip
        check_consistent(result, batch=2)
        key = (
            server.stub()
            .SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name=name))
            .regions[name]
            .key
        )
        assert Path("/dev/shm", key[1:]).exists()
    assert not Path("/dev/shm", key[1:]).exists()  # unlinked
    status = server.stub().SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
    assert name not in status.regions  # and unregistered


def test_command_line_writes_json_csv_markdown_and_chart(
    server: ServerProcess, tmp_path: Path
) -> None:
    rc = load.main(
        ["--url", server.url, "--model", MODEL, "--concurrency", "2", "--rate", "30",
         "--seconds", "0.5", "--warmup", "0.2", "--metrics-url", metrics_url(server),
         "--server-pid", str(server.proc.pid), "--out", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0
    data = json.loads((tmp_path / "load.json").read_text())
    results = data["results"]
    assert [r["mode"] for r in results] == ["closed", "open"]
    assert results[0]["concurrency"] == 2 and results[1]["rate"] == 30
    assert data["meta"]["model"] == MODEL and data["meta"]["machine"]["cores"] >= 1
    with open(tmp_path / "load.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert float(rows[0]["latency.p50_ms"]) > 0
    assert float(rows[0]["server.batching_efficiency"]) >= 1
    md = (tmp_path / "load.md").read_text()
    assert "## server, closed loop" in md and "## server, open loop" in md
    assert "| c=2 | " in md and "| 30/s | " in md and "![latency vs throughput](load.png)" in md
    assert (tmp_path / "load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_batching_restarts_the_server_without_batching(repo: Path, tmp_path: Path) -> None:
    rc = load.main(
        ["--model", MODEL, "--repository", str(repo), "--compare-batching",
         "--concurrency", "4", "--seconds", "0.5", "--warmup", "0.2", "--out", str(tmp_path),
         "--no-chart"]
    )  # fmt: skip
    assert rc == 0
    rows = json.loads((tmp_path / "load.json").read_text())["results"]
    assert [r["config"] for r in rows] == ["batching on", "batching off"]
    on, off = rows
    for r in rows:
        assert r["error_count"] == 0 and r["server"]["inference_count"] >= r["requests"] > 0
    # Without batching every execution is one request of one image.
    assert off["server"]["batching_efficiency"] == 1.0
    assert on["server"]["batching_efficiency"] >= 1.0
    assert on["server_flags"] == [] and off["server_flags"] == ["--no-batching"]
    md = (tmp_path / "load.md").read_text()
    assert "## Dynamic batching on vs off" in md and "| c=4 | " in md


def test_unreachable_server_counts_errors_by_code() -> None:
    from tests.kit.serving import free_port

    result = loadgen.run_closed_loop(f"127.0.0.1:{free_port()}", b"", 1, seconds=0.3, warmup=0)
    assert result["requests"] == 0 and result["latency"] is None
    assert result["errors"].get("UNAVAILABLE", 0) >= 1
    assert result["server"] is None


# --- pure helpers ---------------------------------------------------------------


def test_poisson_schedule_is_seeded_sorted_and_has_the_rate() -> None:
    times = loadgen.poisson_schedule(1000, 10, seed=3)
    assert np.all(np.diff(times) > 0) and times[0] >= 0 and times[-1] < 10
    assert abs(len(times) - 10_000) < 500  # 5 sigma
    gaps = np.diff(times)
    assert np.mean(gaps) == pytest.approx(1e-3, rel=0.05)
    assert np.std(gaps) == pytest.approx(1e-3, rel=0.05)  # exponential: std = mean
    assert np.array_equal(times, loadgen.poisson_schedule(1000, 10, seed=3))
    assert not np.array_equal(times[:10], loadgen.poisson_schedule(1000, 10, seed=4)[:10])
    assert len(loadgen.poisson_schedule(0.5, 1, seed=0)) <= 5
    with pytest.raises(ValueError):
        loadgen.poisson_schedule(0, 1)


def exposition(count_v1: float, count_v2: float, execs: float, queue_sum: float) -> str:
    return f"""\
# HELP inference_count_total Images inferred
# TYPE inference_count_total counter
inference_count_total{{model="m",version="1"}} {count_v1}
inference_count_total{{model="m",version="2"}} {count_v2}
inference_count_total{{model="other",version="1"}} 999.0
# HELP inference_count_created Images inferred
# TYPE inference_count_created gauge
inference_count_created{{model="m",version="1"}} 1.7e9
# HELP inference_exec_count_total Batches
# TYPE inference_exec_count_total counter
inference_exec_count_total{{model="m",version="1"}} {execs}
# HELP inference_requests_total Requests
# TYPE inference_requests_total counter
inference_requests_total{{code="OK",model="m",version="1"}} {count_v1}
inference_requests_total{{code="RESOURCE_EXHAUSTED",model="m",version="1"}} 2.0
# HELP inference_queue_duration_seconds Queue
# TYPE inference_queue_duration_seconds histogram
inference_queue_duration_seconds_bucket{{le="0.001",model="m",version="1"}} 1.0
inference_queue_duration_seconds_bucket{{le="+Inf",model="m",version="1"}} {count_v1}
inference_queue_duration_seconds_count{{model="m",version="1"}} {count_v1}
inference_queue_duration_seconds_sum{{model="m",version="1"}} {queue_sum}
# HELP inference_compute_duration_seconds Compute
# TYPE inference_compute_duration_seconds histogram
inference_compute_duration_seconds_count{{model="m",version="1"}} {execs}
inference_compute_duration_seconds_sum{{model="m",version="1"}} {execs * 0.01}
"""


def test_parse_metrics_keeps_one_model_sums_versions_drops_buckets() -> None:
    parsed = server_metrics.parse_metrics(exposition(10, 5, 4, 0.02), "m")
    assert parsed["inference_count_total"] == 15  # both versions
    assert parsed["inference_exec_count_total"] == 4
    assert parsed["inference_requests_total{code=OK}"] == 10
    assert parsed["inference_requests_total{code=RESOURCE_EXHAUSTED}"] == 2
    assert parsed["inference_queue_duration_seconds_sum"] == pytest.approx(0.02)
    assert not any(k.endswith(("_bucket", "_created")) for k in parsed)
    assert server_metrics.parse_metrics(exposition(10, 5, 4, 0.02), "absent") == {}


def test_metrics_delta_and_server_figures() -> None:
    before = server_metrics.parse_metrics(exposition(10, 0, 4, 0.02), "m")
    after = server_metrics.parse_metrics(exposition(50, 0, 14, 0.10), "m")
    delta = server_metrics.metrics_delta(before, after)
    assert delta["inference_count_total"] == 40
    assert delta["inference_requests_total{code=RESOURCE_EXHAUSTED}"] == 0
    figures = server_metrics.server_figures(delta, window_s=2.0)
    assert figures["batching_efficiency"] == pytest.approx(4.0)  # 40 images / 10 batches
    assert figures["queue_ms_mean"] == pytest.approx(80 / 40)  # 0.08 s over 40 requests
    assert figures["compute_ms_mean"] == pytest.approx(10.0)
    assert figures["compute_busy_pct"] == pytest.approx(100 * 0.1 / 2.0)
    assert figures["requests_by_code"] == {"OK": 40}
    assert figures["request_ms_mean"] is None  # no such histogram in the text
    empty = server_metrics.server_figures({}, window_s=1.0)
    assert empty["batching_efficiency"] is None and empty["queue_ms_mean"] is None


def test_requests_are_serialized_once_with_the_right_payload() -> None:
    info = infer_requests.ModelInfo("m", "2", "input", (3, 4, 4), 8)
    req = pb.ModelInferRequest.FromString(infer_requests.tensor_request(info, batch=3))
    assert (req.model_name, req.model_version) == ("m", "2")
    assert req.inputs[0].datatype == "FP32" and list(req.inputs[0].shape) == [3, 3, 4, 4]
    assert len(req.raw_input_contents[0]) == 3 * 3 * 4 * 4 * 4
    images = [b"a", b"bb", b"ccc"]
    requests = infer_requests.image_requests(info, images, batch=2)
    assert len(requests) == 2  # every image at least once
    sent = []
    for raw in requests:
        req = pb.ModelInferRequest.FromString(raw)
        assert req.inputs[0].datatype == "BYTES" and list(req.inputs[0].shape) == [2]
        blob = req.raw_input_contents[0]
        while blob:
            n = int.from_bytes(blob[:4], "little")
            sent.append(blob[4 : 4 + n])
            blob = blob[4 + n :]
    assert sent == [b"a", b"bb", b"ccc", b"a"]


def test_cpu_counters_and_flatten() -> None:
    assert machine.process_cpu_seconds(os.getpid()) >= 0
    assert machine.process_cpu_seconds(2**22 + 12345) is None  # above Linux's pid_max
    spent = time.process_time()
    while time.process_time() - spent < 0.05:  # this (main) thread burns 50 ms of CPU
        pass
    main = machine.thread_cpu_seconds(os.getpid(), os.getpid())
    assert 0.05 <= main <= machine.process_cpu_seconds(os.getpid()) + 0.02
    assert machine.thread_cpu_seconds(os.getpid(), 2**22 + 12345) is None
    assert machine.machine_cpu_seconds() > 0
    flat = load_report.flatten({"a": 1, "b": {"c": 2, "d": {"e": 3}}})
    assert flat == {"a": 1, "b.c": 2, "b.d.e": 3}


def test_photo_comparison_measures_every_form(
    serve_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``load.py --photo-comparison``'s rows, briefly, on mobilenet_v2: every form answered
    without errors, the 12 MP photo's fast preprocessing cheaper than the reference."""
    srv = start_server(
        serve_repo, "--model", "mobilenet_v2", log_dir=tmp_path_factory.mktemp("photo-log")
    )
    try:
        info = infer_requests.model_info(srv.url, "mobilenet_v2")
        rows = photos.compare(srv.url, info, serve_repo, 1.0, log=lambda _: None)
    finally:
        assert srv.terminate() == 0, srv.output()
    forms = [r["form"] for r in rows]
    assert forms == ["tensor", "jpeg 512x512", "jpeg 1280x960", "jpeg 4032x3024", "uint8 224x224"]
    assert all(r["errors"] == 0 and r["inprocess_images_per_s"] > 0 for r in rows), rows
    phone = rows[3]
    assert phone["preprocess_cpu_ms"] < phone["reference_cpu_ms"], phone
    assert rows[4]["request_bytes"] < rows[0]["request_bytes"] / 3  # UINT8: a quarter
    assert "| jpeg 4032x3024 |" in photos.markdown(rows)


def test_photo_comparison_measures_both_layouts_unless_told_one() -> None:
    both = photos.layouts("")
    assert len(both) == 2 and [] in both.values()  # the default server is one of them
    (tuned,) = [args for args in both.values() if args]
    assert tuned[:2] == ["--intra-op-threads", "1"] and int(tuned[-1]) >= 1
    assert photos.layouts("--instance-count 3") == {"--instance-count 3": ["--instance-count", "3"]}
