"""The gRPC server, for real: batching, errors under load, metrics, health."""

from __future__ import annotations

import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from protos import grpc_service_pb2 as pb
from tests.kit.serving import (
    ServerProcess,
    digits,
    in_process,
    logits_of,
    start_server,
    tensor_request,
)


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    srv = start_server(
        serve_repo, "--max-queue-delay-us", "20000", log_dir=tmp_path_factory.mktemp("log")
    )
    yield srv
    assert srv.terminate() == 0, srv.output()


def test_concurrent_requests_are_batched_and_answered_to_the_right_caller(
    server: ServerProcess, serve_repo: Path
) -> None:
    stub = server.stub()
    before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mobilenet_v2")).model_stats[0]
    images = np.random.default_rng(1).standard_normal((24, 1, 3, 160, 160)).astype(np.float32)
    with ThreadPoolExecutor(12) as pool:
        responses = list(
            pool.map(lambda x: stub.ModelInfer(tensor_request("mobilenet_v2", x)), images)
        )
    expected = in_process(serve_repo, "mobilenet_v2", images[:, 0])
    got = np.concatenate([logits_of(r) for r in responses])
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() / scale < 1e-4  # every caller got its own image's row
    after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mobilenet_v2")).model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 24 and executions < inferences
    assert any(b.batch_size > 1 for b in after.batch_stats)


def test_multi_image_request_counts_as_that_many(server: ServerProcess, serve_repo: Path) -> None:
    x = digits(5, seed=2)
    resp = server.stub().ModelInfer(tensor_request("lenet5", x))
    assert logits_of(resp).shape == (5, 10)
    np.testing.assert_allclose(logits_of(resp), in_process(serve_repo, "lenet5", x), atol=1e-5)


BAD = [
    (
        "unknown model",
        tensor_request("nosuch", digits(1)),
        "NOT_FOUND",
        "Request for unknown model: 'nosuch' is not found",
    ),
    (
        "unknown version",
        tensor_request("lenet5", digits(1), version="7"),
        "NOT_FOUND",
        "Request for unknown model: 'lenet5' version 7 is not found",
    ),
    (
        "missing batch dim",
        tensor_request("lenet5", digits(1)[0]),
        "INVALID_ARGUMENT",
        "[-1, 1, 32, 32]",
    ),
    (
        "wrong size",
        tensor_request("lenet5", np.zeros((1, 1, 28, 28))),
        "INVALID_ARGUMENT",
        "batch dimension first",
    ),
    (
        "oversize batch",
        tensor_request("lenet5", digits(17)),
        "INVALID_ARGUMENT",
        "exceeds max_batch_size 16",
    ),
    ("path in name", tensor_request("../etc", digits(1)), "INVALID_ARGUMENT", "invalid model name"),
]


def _bad_datatype() -> pb.ModelInferRequest:
    req = tensor_request("lenet5", digits(1))
    req.inputs[0].datatype = "INT32"
    return req


def _bad_size() -> pb.ModelInferRequest:
    req = tensor_request("lenet5", digits(1))
    req.raw_input_contents[0] = req.raw_input_contents[0][:-4]
    return req


def _bad_image() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="lenet5")
    tensor = req.inputs.add(name="input", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"\x89PNG\r\n\x1a\n not really a png")
    return req


def _bad_output() -> pb.ModelInferRequest:
    req = tensor_request("lenet5", digits(1))
    req.outputs.add(name="logits").parameters["classification"].int64_param = 11
    return req


def _twice_output() -> pb.ModelInferRequest:
    req = tensor_request("lenet5", digits(1))
    req.outputs.add(name="logits")
    req.outputs.add(name="logits").parameters["classification"].int64_param = 3
    return req


def _negative_images() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="lenet5")
    req.inputs.add(name="input", datatype="BYTES", shape=[-2])
    return req


BAD += [
    ("output twice", _twice_output(), "INVALID_ARGUMENT", "'logits' is requested more than once"),
    ("negative image count", _negative_images(), "INVALID_ARGUMENT", "batch dimension is -2"),
    ("wrong datatype", _bad_datatype(), "INVALID_ARGUMENT", "datatype INT32 is not accepted"),
    ("byte size mismatch", _bad_size(), "INVALID_ARGUMENT", "raw content is 4092 bytes"),
    ("corrupt image", _bad_image(), "INVALID_ARGUMENT", "element 0: cannot decode image"),
    ("k > classes", _bad_output(), "INVALID_ARGUMENT", "classification count 11 exceeds"),
]


def test_bad_requests_get_clear_errors_while_valid_stream_succeeds(
    server: ServerProcess,
) -> None:
    stub = server.stub()
    stop = threading.Event()
    outcomes: list[str] = []

    def valid_stream() -> None:
        x = digits(1, seed=3)
        while not stop.is_set():
            try:
                stub.ModelInfer(tensor_request("lenet5", x), timeout=30)
                outcomes.append("OK")
            except grpc.RpcError as exc:
                outcomes.append(exc.code().name)

    thread = threading.Thread(target=valid_stream)
    thread.start()
    try:
        for label, request, code, message in BAD:
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request, timeout=30)
            assert err.value.code().name == code, (label, err.value.details())
            assert message in err.value.details(), (label, err.value.details())
        with pytest.raises(grpc.RpcError) as err:  # expired deadline
            stub.ModelInfer(
                tensor_request("mobilenet_v2", np.zeros((8, 3, 224, 224))), timeout=0.001
            )
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        stop.set()
        thread.join()
    assert outcomes and set(outcomes) == {"OK"}, outcomes


def test_metrics_count_a_known_workload(server: ServerProcess) -> None:
    def scrape() -> dict[tuple[str, tuple], float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read()
        out = {}
        for family in text_string_to_metric_families(text.decode()):
            for s in family.samples:
                if s.labels.get("model") == "lenet5":
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def get(samples: dict, name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"model": "lenet5", "version": "1", **labels}.items())))
        return samples.get(key, 0.0)

    before = scrape()
    stub = server.stub()
    for _ in range(4):
        stub.ModelInfer(tensor_request("lenet5", digits(1)))
    stub.ModelInfer(tensor_request("lenet5", digits(3)))
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(tensor_request("lenet5", digits(1)[0]))
    after = scrape()
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    assert get(delta, "inference_requests_total", code="OK", protocol="grpc") == 5
    assert get(delta, "inference_requests_total", code="INVALID_ARGUMENT", protocol="grpc") == 1
    assert get(delta, "inference_count_total") == 7
    assert 1 <= get(delta, "inference_exec_count_total") <= 5
    assert get(delta, "inference_request_duration_seconds_count") == 5
    assert get(delta, "inference_batch_size_sum") == 7
    assert get(delta, "inference_compute_duration_seconds_count") >= 1
    assert get(after, "inference_in_flight") == 0


def test_health_and_reflection(server: ServerProcess) -> None:
    channel = grpc.insecure_channel(server.url)
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
    assert health.Check(health_pb2.HealthCheckRequest(service="lenet5")).status == serving
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="nosuch"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(
        stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in reply.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_trace_setting_answers_tritons_defaults(server: ServerProcess) -> None:
    answer = server.stub().TraceSetting(pb.TraceSettingRequest())
    settings = {key: list(value.value) for key, value in answer.settings.items()}
    assert settings["trace_level"] == ["OFF"] and settings["trace_mode"] == ["triton"]
