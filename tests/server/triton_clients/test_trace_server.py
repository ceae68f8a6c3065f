"""Trace and log settings against a real server: tritonclient over gRPC and HTTP, the trace
file the server writes, the spans an OTLP receiver gets, and the server's own log.

tritonclient runs in a child interpreter (tests/kit/triton_trace.py); the server is started
with its trace settings as CNN_SERVING_TRACING__* variables.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devtools.launch import launch
from protos import grpc_service_pb2 as pb
from server.settings.sources import section_env
from server.settings.tracing import TraceSettings
from tests.kit import KIT
from tests.kit.otlp_receiver import OtlpReceiver
from tests.kit.serving import _STARTED, EXPLICIT, ServerProcess, digits, tensor_request
from tests.kit.triton_helpers import LENET, ROOT

CHILD = KIT / "triton_trace.py"
CORE = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END"]
CORE += ["COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END"]
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"  # W3C trace and span ids
FRONTEND = {
    "grpc": ["GRPC_WAITREAD_END", "GRPC_SEND_START"],
    "http": ["HTTP_RECV_START", "HTTP_RECV_END", "HTTP_SEND_START"],
}


@pytest.fixture(scope="module")
def lenet_repo(serve_repo: Path) -> Path:
    """The session's server repository (the servers here load only lenet5 from it)."""
    return serve_repo


def _serve(repo: Path, folder: Path, settings: TraceSettings) -> ServerProcess:
    """``python -m server`` with ``settings`` (as CNN_SERVING_TRACING__*), once ready."""
    log = folder / f"server-{time.monotonic_ns()}.log"
    # explicit model control: the log flow reloads the model to see its log lines
    env = {**section_env("tracing", settings), **section_env("security", EXPLICIT)}
    launched = launch(repo, "--model", LENET, log=log, cwd=ROOT, env=env)
    _STARTED.append(launched.proc)  # killed at exit if a test fails before terminate()
    return ServerProcess(
        launched.proc, launched.port, launched.metrics_port, launched.log, launched.http_port
    )


def _timestamps(entries: list[dict[str, Any]]) -> dict[int, tuple[dict[str, Any], list[str]]]:
    """Trace id -> (its identity, its timestamp names in time order)."""
    heads = {e["id"]: e for e in entries if "model_name" in e}
    names = {e["id"]: [t["name"] for t in e["timestamps"]] for e in entries if "timestamps" in e}
    return {i: (heads[i], names[i]) for i in heads}


@pytest.fixture(scope="module")
def traced(lenet_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the tritonclient flows against a server with a trace file; stop it; what was seen."""
    folder = tmp_path_factory.mktemp("traced")
    trace_file = folder / "trace.json"
    srv = _serve(lenet_repo, folder, TraceSettings(file=str(trace_file)))
    try:
        np.save(folder / "digits.npy", digits(1))
        plan = {"grpc": srv.url, "http": f"127.0.0.1:{srv.http_port}", "model": LENET}
        plan["digits"] = str(folder / "digits.npy")
        (folder / "plan.json").write_text(json.dumps(plan))
        child = subprocess.run(
            [sys.executable, str(CHILD), str(folder / "plan.json")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
            check=False,
        )
        assert child.returncode == 0, child.stderr[-4000:]
    finally:
        code = srv.terminate(timeout=60)
    assert code == 0, srv.output()[-4000:]
    files = {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("trace.json*"))}
    return {"report": json.loads(child.stdout), "files": files, "log": srv.output()}


# ------------------------------------------------------------------ trace settings


def test_settings_start_at_tritons_defaults_on_both_protocols(traced: dict[str, Any]) -> None:
    trace = traced["report"]["trace"]
    http = trace["defaults_http"]
    assert http["trace_level"] == ["OFF"]
    assert (http["trace_rate"], http["trace_count"], http["log_frequency"]) == ("1000", "-1", "0")
    assert http["trace_mode"] == "triton" and http["trace_file"].endswith("trace.json")
    assert trace["defaults_grpc"] == {k: v if isinstance(v, list) else [v] for k, v in http.items()}


def test_a_model_setting_overrides_some_fields_and_clears_back(traced: dict[str, Any]) -> None:
    trace = traced["report"]["trace"]
    assert trace["global_http"]["trace_level"] == ["TIMESTAMPS"]
    model = trace["model_grpc"]
    own = (model["trace_rate"], model["trace_count"], model["log_frequency"])
    assert own == (["1"], ["4"], ["2"])
    assert trace["model_after"]["trace_count"] == "0"  # four traces taken
    assert trace["cleared"] == trace["global_now"]  # nothing of its own: the global setting


def test_the_trace_file_holds_tritons_timestamps(traced: dict[str, Any]) -> None:
    files, order = traced["files"], traced["report"]["trace"]["order"]
    assert sorted(files) == ["trace.json", "trace.json.0", "trace.json.1"]
    per_file = [_timestamps(files[f"trace.json.{i}"]) for i in (0, 1)]
    assert [len(t) for t in per_file] == [2, 2]  # log_frequency 2, count 4
    traces = {**per_file[0], **per_file[1]}
    for i, (head, names) in enumerate(traces[k] for k in sorted(traces)):
        assert head["model_name"] == LENET and head["model_version"] == 1
        protocol = order[i]
        assert [n for n in names if n in CORE] == CORE, names
        assert set(names) == set(CORE) | set(FRONTEND[protocol]), names
        assert names[0] == FRONTEND[protocol][0] and names[-1] == FRONTEND[protocol][-1]
    last = _timestamps(files["trace.json"])  # the global setting's, written at shutdown
    firsts = [names[0] for _, names in (last[k] for k in sorted(last))]
    assert firsts == ["HTTP_RECV_START", "GRPC_WAITREAD_END"]  # the HTTP one, the streamed one
    assert all(set(names) >= set(CORE) for _, names in last.values())


def test_timestamps_are_monotonic_nanoseconds_in_order(traced: dict[str, Any]) -> None:
    for entry in traced["files"]["trace.json.0"]:
        if "timestamps" in entry:
            ns = [t["ns"] for t in entry["timestamps"]]
            assert ns == sorted(ns) and all(isinstance(n, int) and n > 0 for n in ns)
            assert ns[-1] - ns[0] < 60e9


ERRORS = {
    # key: (tritonclient's status, the message it must hold)
    "grpc_file": ("StatusCode.UNIMPLEMENTED", "trace file location can not be updated"),
    "http_file": ("501", "trace file location can not be updated"),
    "grpc_unknown_model": ("StatusCode.INVALID_ARGUMENT", "Request for unknown model : no_such"),
    "http_unknown_model": ("400", "Request for unknown model : no_such_model"),
    "http_bad_rate": ("400", "Unable to parse 'trace_rate', got: x"),
    "grpc_tensors": ("StatusCode.UNIMPLEMENTED", "TENSORS is not supported"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_trace_requests_are_refused(traced: dict[str, Any], case: str) -> None:
    answer = traced["report"]["trace"]["errors"][case]
    status, message = ERRORS[case]
    assert answer["ok"] is False, answer
    assert message in answer["message"], answer
    assert answer["status"] in (status, "None"), answer  # tritonclient.http: status may be None


# ------------------------------------------------------------------ log settings


def test_log_settings_read_and_change_the_running_server(traced: dict[str, Any]) -> None:
    logs = traced["report"]["log"]
    http = logs["defaults_http"]
    assert http == {
        "log_file": "",
        "log_info": True,
        "log_warning": True,
        "log_error": True,
        "log_verbose_level": 0,
        "log_format": "default",
    }
    assert logs["defaults_grpc"]["log_info"] == {"bool_param": True}
    assert logs["iso"]["log_format"] == {"string_param": "ISO8601"}
    assert logs["quiet"]["log_info"] is False and logs["loud"]["log_info"] == {"bool_param": True}
    ready = [line for line in traced["log"].splitlines() if f"model {LENET} ready" in line]
    assert len(ready) == 3, ready  # at start, after the ISO8601 switch, not while info was off
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I \d+ models\.py:\d+\] model lenet5 ready.*"
    assert not re.fullmatch(iso, ready[0]) and all(re.fullmatch(iso, r) for r in ready[1:])


def test_bad_log_settings_are_refused(traced: dict[str, Any]) -> None:
    errors = traced["report"]["log"]["errors"]
    assert "log file location can not be updated" in errors["http_file"]["message"]
    assert errors["grpc_format"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "invalid argument for log_format, got: xml" in errors["grpc_format"]["message"]
    assert "expect boolean for 'log_info'" in errors["http_info"]["message"]


# ------------------------------------------------------------------ OpenTelemetry


def test_opentelemetry_mode_exports_spans_of_served_requests(
    lenet_repo: Path, tmp_path: Path
) -> None:
    receiver = OtlpReceiver()
    settings = TraceSettings(
        mode="opentelemetry",
        level="TIMESTAMPS",
        rate=1,
        otel_url=receiver.url,
        bsp_schedule_delay_ms=50,
    )
    srv = _serve(lenet_repo, tmp_path, settings)
    try:
        stub = srv.stub()
        described = stub.TraceSetting(pb.TraceSettingRequest())
        assert list(described.settings["trace_mode"].value) == ["opentelemetry"]
        assert list(described.settings["url"].value) == [receiver.url]
        request = tensor_request(LENET, digits(2))
        request.id = "otel-1"
        stub.ModelInfer(request)
        spans = receiver.wait_for(3)  # exported while the server runs (50 ms batches)
        stub.ModelInfer(request, metadata=(("traceparent", f"00-{CLIENT_TRACE}-01"),))
        continued = [s for s in receiver.wait_for(6) if s.trace_id == CLIENT_TRACE.split("-")[0]]
    finally:
        assert srv.terminate(timeout=60) == 0, srv.output()[-4000:]
        receiver.close()
    by_name = {s.name: s for s in spans}
    root, model, compute = by_name["InferRequest"], by_name[LENET], by_name["compute"]
    assert model.parent_id == root.span_id and compute.parent_id == model.span_id
    assert model.attributes["triton.request_id"] == "otel-1"
    assert [e for e, _ in compute.events] == CORE[2:6]
    assert root.start_ns <= model.start_ns <= compute.start_ns <= compute.end_ns <= root.end_ns
    assert sorted(s.name for s in continued) == sorted(by_name)  # the client's trace, continued
    assert next(s for s in continued if s.name == "InferRequest").parent_id == "00f067aa0ba902b7"
