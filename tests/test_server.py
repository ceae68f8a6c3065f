"""The gRPC server, for real: batching, errors under load, metrics, health, lifecycle."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from exporter.pipeline import ExportRequest, export_model
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from tests.serving import ServerProcess, start_server


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve-repo")
    for name in ("lenet5", "mobilenet_v2"):
        export_model(ExportRequest(model=name, repository=path), progress=lambda _: None)
    return path


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    srv = start_server(
        repo, "--max-queue-delay-us", "20000", log_dir=tmp_path_factory.mktemp("log")
    )
    yield srv
    assert srv.terminate() == 0, srv.output()


def tensor_request(model: str, x: np.ndarray, version: str = "") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return req


def logits_of(resp: pb.ModelInferResponse) -> np.ndarray:
    shape = list(resp.outputs[0].shape)
    return np.frombuffer(resp.raw_output_contents[0], dtype="<f4").reshape(shape)


def in_process(repo: Path, model: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"input": x})[0]


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 32, 32)).astype(np.float32)


def test_concurrent_requests_are_batched_and_answered_to_the_right_caller(
    server: ServerProcess, repo: Path
) -> None:
    stub = server.stub()
    before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mobilenet_v2")).model_stats[0]
    images = np.random.default_rng(1).standard_normal((24, 1, 3, 160, 160)).astype(np.float32)
    with ThreadPoolExecutor(12) as pool:
        responses = list(
            pool.map(lambda x: stub.ModelInfer(tensor_request("mobilenet_v2", x)), images)
        )
    expected = in_process(repo, "mobilenet_v2", images[:, 0])
    got = np.concatenate([logits_of(r) for r in responses])
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() / scale < 1e-4  # every caller got its own image's row
    after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mobilenet_v2")).model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 24 and executions < inferences
    assert any(b.batch_size > 1 for b in after.batch_stats)


def test_multi_image_request_counts_as_that_many(server: ServerProcess, repo: Path) -> None:
    x = digits(5, seed=2)
    resp = server.stub().ModelInfer(tensor_request("lenet5", x))
    assert logits_of(resp).shape == (5, 10)
    np.testing.assert_allclose(logits_of(resp), in_process(repo, "lenet5", x), atol=1e-5)


BAD = [
    ("unknown model", tensor_request("nosuch", digits(1)), "NOT_FOUND", "unknown model 'nosuch'"),
    (
        "unknown version",
        tensor_request("lenet5", digits(1), version="7"),
        "NOT_FOUND",
        "no served version '7'",
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


BAD += [
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


def test_full_queue_is_resource_exhausted_and_accepted_requests_complete(
    repo: Path, tmp_path: Path
) -> None:
    srv = start_server(
        repo,
        "--model",
        "mobilenet_v2",
        "--max-batch-size",
        "1",
        "--max-queue-size",
        "2",
        "--no-warmup",
        log_dir=tmp_path,
    )
    try:
        stub = srv.stub()
        x = np.zeros((1, 3, 224, 224), np.float32)

        def call(_: int) -> str:
            try:
                stub.ModelInfer(tensor_request("mobilenet_v2", x), timeout=60)
                return "OK"
            except grpc.RpcError as exc:
                assert "full" in exc.details(), exc.details()
                return exc.code().name

        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(call, range(48)))
        assert set(results) == {"OK", "RESOURCE_EXHAUSTED"}, results
    finally:
        assert srv.terminate() == 0


def test_sigterm_answers_every_accepted_request(repo: Path, tmp_path: Path) -> None:
    srv = start_server(repo, "--model", "mobilenet_v2", "--max-batch-size", "2", log_dir=tmp_path)
    stub = srv.stub()
    x = np.zeros((2, 3, 512, 512), np.float32)  # heavy enough to still be queued at SIGTERM
    results: list[str] = []

    def call() -> None:
        try:
            stub.ModelInfer(tensor_request("mobilenet_v2", x), timeout=60)
            results.append("OK")
        except grpc.RpcError as exc:
            results.append(exc.code().name)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while in_flight(srv, "mobilenet_v2") < 6 and time.monotonic() < deadline:
        time.sleep(0.02)  # let the server accept a good share of them first
    answered_before = results.count("OK")
    held = in_flight(srv, "mobilenet_v2")
    assert held >= 6
    assert srv.terminate(timeout=120) == 0, srv.output()
    for t in threads:
        t.join()
    # Every request the server held at SIGTERM was answered. Ones still in the
    # transport, not yet handed to the server, are refused by gRPC itself
    # (UNAVAILABLE, or CANCELLED when it closes the stream); none fails mid-way.
    assert results.count("OK") >= answered_before + held, results
    assert set(results) <= {"OK", "UNAVAILABLE", "CANCELLED"}, results


def in_flight(srv: ServerProcess, model: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics").read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "inference_in_flight" and sample.labels.get("model") == model:
                return sample.value
    return 0.0


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
    assert get(delta, "inference_requests_total", code="OK") == 5
    assert get(delta, "inference_requests_total", code="INVALID_ARGUMENT") == 1
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


def test_unimplemented_rpcs_say_so(server: ServerProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        server.stub().TraceSetting(pb.TraceSettingRequest())
    assert (
        err.value.code() == grpc.StatusCode.UNIMPLEMENTED and "TraceSetting" in err.value.details()
    )


def test_gpu_model_without_gpu_fails_to_load_while_others_serve(repo: Path, tmp_path: Path) -> None:
    local = tmp_path / "repo"
    shutil.copytree(repo / "lenet5", local / "lenet5")
    shutil.copytree(repo / "lenet5", local / "lenet5_gpu")
    config_path = local / "lenet5_gpu" / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    config.name = "lenet5_gpu"
    config.instance_group[0].kind = mc.ModelInstanceGroup.KIND_GPU
    config_path.write_text(text_format.MessageToString(config))
    srv = start_server(local, log_dir=tmp_path)
    try:
        stub = srv.stub()
        index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
        assert index["lenet5"].state == "READY"
        assert index["lenet5_gpu"].state == "UNAVAILABLE"
        assert "KIND_GPU" in index["lenet5_gpu"].reason
        assert not stub.ModelReady(pb.ModelReadyRequest(name="lenet5_gpu")).ready
        assert logits_of(stub.ModelInfer(tensor_request("lenet5", digits(1)))).shape == (1, 10)
    finally:
        assert srv.terminate() == 0


def test_load_unload_and_new_version_while_streaming(repo: Path, tmp_path: Path) -> None:
    local = tmp_path / "repo"
    shutil.copytree(repo / "lenet5", local / "lenet5")
    srv = start_server(local, log_dir=tmp_path)
    stub = srv.stub()
    stop = threading.Event()
    outcomes: list[str] = []

    def stream() -> None:
        while not stop.is_set():
            try:
                stub.ModelInfer(tensor_request("lenet5", digits(1)), timeout=30)
                outcomes.append("OK")
            except grpc.RpcError as exc:
                outcomes.append(f"{exc.code().name}: {exc.details()}")

    thread = threading.Thread(target=stream)
    try:
        thread.start()
        shutil.copytree(local / "lenet5" / "1", local / "lenet5" / "2")
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="lenet5"))
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="lenet5"))
        assert list(meta.versions) == ["2"]
        time.sleep(0.5)
        stop.set()
        thread.join()
        assert outcomes and set(outcomes) == {"OK"}, set(outcomes)

        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="lenet5"))
        assert not stub.ModelReady(pb.ModelReadyRequest(name="lenet5")).ready
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(tensor_request("lenet5", digits(1)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="lenet5"))
        assert stub.ModelReady(pb.ModelReadyRequest(name="lenet5", version="2")).ready
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="../../etc"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stop.set()
        assert srv.terminate() == 0


def test_expired_and_cancelled_requests_are_never_computed(repo: Path, tmp_path: Path) -> None:
    srv = start_server(
        repo, "--model", "mobilenet_v2", "--max-batch-size", "1", "--no-warmup", log_dir=tmp_path
    )
    try:
        stub = srv.stub()
        heavy = tensor_request("mobilenet_v2", np.zeros((1, 3, 512, 512), np.float32))
        ok: list[bool] = []

        def busy(_: int) -> None:
            stub.ModelInfer(heavy, timeout=120)
            ok.append(True)

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(busy, i) for i in range(16)]
            time.sleep(0.2)  # the queue is now many batches deep
            late = [stub.ModelInfer.future(heavy, timeout=0.05) for _ in range(4)]
            cancelled = [stub.ModelInfer.future(heavy, timeout=120) for _ in range(4)]
            for call in cancelled:
                call.cancel()
            for call in late:
                with pytest.raises(grpc.RpcError) as err:
                    call.result()
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            for f in futures:
                f.result()
        time.sleep(0.5)
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mobilenet_v2"))
        assert stats.model_stats[0].inference_count == len(ok) == 16  # the 8 others never ran
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics").read()
        dropped = sum(
            s.value
            for fam in text_string_to_metric_families(text.decode())
            for s in fam.samples
            if s.name == "inference_dropped_total"
        )
        # Those that reached the server were dropped from the queue (a cancel can also
        # beat the request to the server, then there is nothing to drop).
        assert 1 <= dropped <= 8
    finally:
        assert srv.terminate() == 0
