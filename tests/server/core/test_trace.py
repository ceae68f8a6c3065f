"""Trace settings, trace files, OpenTelemetry spans and log settings, in this process.

Triton's rules (``tracer.cc``): a model setting takes the fields it does not set from the
global one, also after the global one changes, and clearing all of them removes it; the
remaining count goes down with each trace; ``log_frequency`` N writes every N traces to
``FILE.<i>``. The server-level flows (tritonclient over both protocols) are in
test_trace_server.py.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelrepo.serving import ServingConfig
from server.batching.batcher import DynamicBatcher
from server.core.errors import InvalidArgument, Unimplemented
from server.core.logsettings import LogControl
from server.core.trace import Setting, Trace, Tracer
from server.core.trace_output import trace_text
from server.settings.tracing import TraceSettings
from tests.kit.otlp_receiver import OtlpReceiver


def _tracer(tmp_path: Path, **settings: object) -> Tracer:
    return Tracer(TraceSettings(file=str(tmp_path / "trace.json"), **settings))


def _run(tracer: Tracer, model: str, n: int) -> list[int]:
    """``n`` requests of ``model`` through sampling; the ids of those traced."""
    ids = []
    for _ in range(n):
        trace = tracer.sample(model)
        if trace is not None:
            trace.begin(model, 1, "")
            trace.stamp("REQUEST_END")
            tracer.finish(trace)
            ids.append(trace.id)
    return ids


def _ids(path: Path) -> list[int]:
    return [obj["id"] for obj in json.loads(path.read_text()) if "model_name" in obj]


# ------------------------------------------------------------------ settings


def test_defaults_are_tritons_and_tracing_is_off() -> None:
    tracer = Tracer()
    assert tracer.describe() == {
        "trace_level": ["OFF"],
        "trace_rate": ["1000"],
        "trace_count": ["-1"],
        "log_frequency": ["0"],
        "trace_file": [""],
        "trace_mode": ["triton"],
    }
    assert tracer.on is False
    assert tracer.sample("m") is None


def test_model_setting_falls_back_to_the_global_one_field_by_field(tmp_path: Path) -> None:
    tracer = _tracer(tmp_path)
    tracer.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["10"]})
    own = tracer.update("m", {"trace_rate": ["2"], "log_frequency": ["5"]})
    assert (own["trace_level"], own["trace_rate"], own["log_frequency"]) == (
        ["TIMESTAMPS"],
        ["2"],
        ["5"],
    )
    tracer.update("", {"trace_count": ["7"], "trace_rate": ["3"]})  # the model follows count
    assert tracer.describe("m")["trace_count"] == ["7"]
    assert tracer.describe("m")["trace_rate"] == ["2"]  # but keeps its own rate
    assert tracer.describe("other") == tracer.describe()  # no setting: the global one
    cleared = tracer.update("m", {"trace_rate": None})  # back to the global rate
    assert cleared["trace_rate"] == ["3"] and cleared["log_frequency"] == ["5"]
    tracer.update("m", {"log_frequency": []})  # nothing of its own left: setting removed
    assert tracer.describe("m") == tracer.describe()


def test_clearing_a_global_field_restores_the_start_value(tmp_path: Path) -> None:
    tracer = _tracer(tmp_path, rate=50)
    tracer.update("", {"trace_rate": ["4"]})
    assert tracer.update("", {"trace_rate": None})["trace_rate"] == ["50"]


BAD = [
    ({"trace_rate": ["fast"]}, InvalidArgument, "Unable to parse 'trace_rate', got: fast"),
    (
        {"trace_rate": ["-1"]},
        InvalidArgument,
        "Unable to parse 'trace_rate', value is out of range [ 0, 4294967295 ], got: -1",
    ),
    (
        {"trace_count": ["-2"]},
        InvalidArgument,
        "Unable to parse 'trace_count'. Expecting value >= -1, got: -2",
    ),
    ({"log_frequency": ["1", "2"]}, InvalidArgument, "expect only 1 value for 'log_frequency'"),
    (
        {"trace_level": ["OFF", "TIMESTAMPS"]},
        InvalidArgument,
        "Expect only one trace level 'OFF' is specified",
    ),
    ({"trace_level": ["LOUD"]}, InvalidArgument, "unknown trace level 'LOUD'"),
    ({"trace_level": ["TENSORS"]}, Unimplemented, "TENSORS is not supported"),
    (
        {"trace_file": ["/etc/passwd"]},
        Unimplemented,
        "trace file location can not be updated through network protocol",
    ),
    ({"trace_mode": ["opentelemetry"]}, Unimplemented, "trace mode can not be updated"),
    ({"trace_rat": ["1"]}, InvalidArgument, "unknown trace setting 'trace_rat'; known:"),
]


@pytest.mark.parametrize(("changes", "error", "message"), BAD)
def test_bad_updates_are_refused_naming_the_value(
    tmp_path: Path, changes: dict, error: type, message: str
) -> None:
    tracer = _tracer(tmp_path)
    before = tracer.describe()
    with pytest.raises(error) as raised:
        tracer.update("", changes)
    assert message in str(raised.value)
    assert tracer.describe() == before


def test_a_global_update_that_a_model_setting_cannot_take_changes_nothing(
    tmp_path: Path,
) -> None:
    tracer = _tracer(tmp_path)
    tracer.update("m", {"trace_level": ["TIMESTAMPS"]})  # the rest follows the global setting
    with pytest.raises(InvalidArgument, match="sample rate must be non-zero"):
        tracer.update("", {"trace_rate": ["0"]})  # fine for the global (OFF), not for m
    assert tracer.describe()["trace_rate"] == tracer.describe("m")["trace_rate"] == ["1000"]


def test_tracing_without_a_file_is_refused_as_triton_does() -> None:
    with pytest.raises(InvalidArgument, match="invalid trace setting :trace file name is not"):
        Tracer().update("", {"trace_level": ["TIMESTAMPS"]})
    with pytest.raises(ValueError, match="needs a trace file"):
        TraceSettings(level="TIMESTAMPS")


def test_rate_and_count_pick_the_traced_requests(tmp_path: Path) -> None:
    tracer = _tracer(tmp_path, level="TIMESTAMPS", rate=3)
    tracer.update("m", {"trace_count": ["2"]})
    assert len(_run(tracer, "m", 12)) == 2  # 3rd and 6th; then the count is spent
    assert tracer.describe("m")["trace_count"] == ["0"]
    assert len(_run(tracer, "other", 9)) == 3  # the global setting has no count
    tracer.update("", {"trace_level": ["OFF"]})
    tracer.update("m", {"trace_level": ["OFF"]})
    assert tracer.on is False
    tracer.close()


# ------------------------------------------------------------------ the trace file


def test_log_frequency_writes_numbered_files_and_the_rest_at_shutdown(tmp_path: Path) -> None:
    tracer = _tracer(tmp_path, level="TIMESTAMPS", rate=1, log_frequency=2)
    ids = _run(tracer, "m", 5)
    tracer.close()
    assert [_ids(tmp_path / f"trace.json.{i}") for i in range(3)] == [ids[:2], ids[2:4], ids[4:]]
    assert not (tmp_path / "trace.json").exists()


def test_traces_are_written_to_the_file_when_their_setting_ends(tmp_path: Path) -> None:
    tracer = _tracer(tmp_path, level="TIMESTAMPS", rate=1)
    first = _run(tracer, "m", 3)
    tracer.update("", {"trace_rate": ["1"]})  # replaces the setting: its traces are written
    second = _run(tracer, "m", 2)
    tracer.close()
    assert _ids(tmp_path / "trace.json") == first + second  # one valid JSON array


def test_spent_count_writes_the_last_traces_at_once(tmp_path: Path) -> None:
    tracer = _tracer(tmp_path, level="TIMESTAMPS", rate=1, count=3)
    ids = _run(tracer, "m", 5)
    deadline = time.monotonic() + 60
    while not (tmp_path / "trace.json.0").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the writer thread's turn
    assert _ids(tmp_path / "trace.json.0") == ids == [1, 2, 3]
    tracer.close()


def test_a_stalled_writer_drops_traces_and_never_blocks_requests(tmp_path: Path) -> None:
    """The first trace file is a FIFO nobody reads: the writer thread blocks opening it."""
    os.mkfifo(tmp_path / "trace.json.0")
    tracer = _tracer(tmp_path, level="TIMESTAMPS", rate=1, log_frequency=1, max_pending=2)
    started = time.monotonic()
    ids = _run(tracer, "m", 10)
    assert len(ids) == 10 and time.monotonic() - started < 30  # sampled, handed over, on
    assert tracer.writer.dropped >= 7  # at most one in the writer's hands and two queued
    with open(tmp_path / "trace.json.0") as fifo:  # unblock the writer
        first = json.loads(fifo.read())
    tracer.close()
    later = [_ids(p) for p in sorted(tmp_path.glob("trace.json.[1-9]"))]
    assert [first[0]["id"]] == ids[:1]
    assert tracer.writer.written + tracer.writer.dropped == 10  # each written or counted
    assert len(later) == tracer.writer.written - 1 and all(len(b) == 1 for b in later)


def test_a_trace_is_tritons_json() -> None:
    setting = Setting("TIMESTAMPS", 1, -1, 0, "f", "triton")
    trace = Trace(7, "lenet5", setting)
    trace.stamp("HTTP_RECV_START", 5)
    trace.begin("lenet5", 2, "req-1")
    trace.stamp("QUEUE_START", 10)  # out of order: written in time order
    head, stamps = json.loads(f"[{trace_text(trace)}]")
    assert head == {
        "id": 7,
        "model_name": "lenet5",
        "model_version": 2,
        "request_id": "req-1",
    }
    names = [s["name"] for s in stamps["timestamps"]]
    assert names == ["HTTP_RECV_START", "QUEUE_START", "REQUEST_START"]


def test_the_batcher_stamps_queue_and_compute_times() -> None:
    config = ServingConfig(max_batch_size=4, preferred_batch_sizes=(4,))
    batcher = DynamicBatcher(lambda x: x * 2, config, name="double")
    batcher.start()
    trace = Trace(1, "double", Setting("TIMESTAMPS", 1, -1, 0, "f", "triton"))
    try:
        out = batcher.submit_future(np.ones((2, 3), np.float32), trace=trace).result(timeout=60)
    finally:
        batcher.close()
    assert out.tolist() == [[2.0] * 3] * 2
    stamps = dict(trace.stamps)
    order = ["QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END"]
    order += ["COMPUTE_OUTPUT_START", "COMPUTE_END"]
    assert list(stamps) == order
    times = [stamps[name] for name in order]
    assert times == sorted(times)
    assert abs(times[0] - time.monotonic_ns()) < 60e9  # Triton's clock: monotonic ns


# ------------------------------------------------------------------ OpenTelemetry


def test_opentelemetry_mode_exports_tritons_three_spans() -> None:
    receiver = OtlpReceiver()
    settings = TraceSettings(
        mode="opentelemetry", level="TIMESTAMPS", rate=1, otel_url=receiver.url
    )
    tracer = Tracer(settings)
    try:
        trace = tracer.sample("lenet5")
        assert trace is not None
        trace.stamp("GRPC_WAITREAD_END")
        trace.begin("lenet5", 1, "abc")
        now = time.monotonic()
        trace.batched(now, now, time.monotonic_ns(), time.monotonic_ns())
        trace.stamp("REQUEST_END")
        trace.stamp("GRPC_SEND_START")
        tracer.finish(trace)
        tracer.close()  # shutdown exports what the batch processor holds
        spans = {s.name: s for s in receiver.wait_for(3)}
    finally:
        receiver.close()
    root, model, compute = spans["InferRequest"], spans["lenet5"], spans["compute"]
    assert model.parent_id == root.span_id and compute.parent_id == model.span_id
    assert root.trace_id == model.trace_id == compute.trace_id
    assert model.attributes["triton.model_name"] == "lenet5"
    assert model.attributes["triton.model_version"] == 1
    assert model.attributes["triton.request_id"] == "abc"
    assert [e[0] for e in model.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert [e[0] for e in compute.events][0] == "COMPUTE_START"
    assert [e[0] for e in root.events] == ["GRPC_WAITREAD_END", "GRPC_SEND_START"]
    assert abs(root.start_ns - time.time_ns()) < 120e9  # wall clock, not monotonic
    assert root.resource["service.name"] == "cnn-serving"
    assert tracer.describe()["url"] == [receiver.url]
    assert "trace_file" not in tracer.describe()


def test_a_client_trace_context_is_always_traced_and_continued() -> None:
    receiver = OtlpReceiver()
    settings = TraceSettings(mode="opentelemetry", level="TIMESTAMPS", otel_url=receiver.url)
    tracer = Tracer(settings)  # rate 1000: only the propagated request is traced
    client_trace, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    try:
        assert tracer.sample("m") is None
        trace = tracer.sample("m", f"00-{client_trace}-{client_span}-01")
        assert trace is not None
        trace.begin("m", 1, "")
        trace.stamp("REQUEST_END")
        tracer.finish(trace)
        tracer.close()
        spans = {s.name: s for s in receiver.wait_for(2)}
    finally:
        receiver.close()
    assert spans["InferRequest"].trace_id == spans["m"].trace_id == client_trace
    assert spans["InferRequest"].parent_id == client_span


# ------------------------------------------------------------------ log settings


@pytest.fixture
def logs() -> Iterator[tuple[LogControl, logging.Logger, io.StringIO]]:
    logger = logging.getLogger("test_trace.logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.handlers = [handler]
    control = LogControl(logger)
    yield control, logger, out
    # pytest hangs its capture handlers on this logger too: leave them unfiltered.
    control.detach()
    assert all(control not in h.filters for h in logging.getLogger().handlers + logger.handlers)


def test_log_settings_switch_severities_and_format(logs) -> None:
    control, logger, out = logs
    assert control.describe() == {
        "log_file": "",
        "log_info": True,
        "log_warning": True,
        "log_error": True,
        "log_verbose_level": 0,
        "log_format": "default",
    }
    logger.debug("hidden")
    logger.info("shown")
    control.update({"log_info": False, "log_error": False, "log_verbose_level": 1})
    logger.debug("debug on")
    logger.info("info off")
    logger.warning("warning on")
    logger.error("error off")
    control.update({"log_format": "ISO8601", "log_info": True, "log_error": None})
    logger.info("iso")
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["INFO shown", "DEBUG debug on", "WARNING warning on"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I \d+ test_trace\.py:\d+\] iso", lines[3])
    assert control.describe()["log_error"] is False  # null left it as it was


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"log_info": "yes"}, InvalidArgument, "expect boolean for 'log_info'"),
        ({"log_verbose_level": -1}, InvalidArgument, "expect int32 for 'log_verbose_level'"),
        ({"log_verbose_level": True}, InvalidArgument, "expect int32"),
        ({"log_format": "json"}, InvalidArgument, "invalid argument for log_format, got: json"),
        ({"log_file": "/tmp/x"}, Unimplemented, "log file location can not be updated"),
        ({"log_level": 1}, InvalidArgument, "unknown log setting 'log_level'"),
    ],
)
def test_bad_log_settings_change_nothing(logs, changes: dict, error: type, message: str) -> None:
    control = logs[0]
    before = control.describe()
    with pytest.raises(error, match=re.escape(message)):
        control.update({"log_warning": False, **changes})
    assert control.describe() == before
