"""Nothing large on the event loop (issue 25): hostile requests against a real server
while a probe measures how long the loop stood still (tests/kit/loop_probe.py).

Before: 60,000 duplicated outputs froze HTTP and gRPC for 35 s (1.2 MB over HTTP),
a 60 MiB binary-extension JSON header for 2.2 s, six large JSON bodies at once for
7.3 s and +1.4 GB. Now the counts are refused before any per-item work, the header
from its length, and large JSON is parsed in worker processes.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from server.settings.limits import HttpLimits, RequestLimits
from tests.kit.http_kit import HEADER_LENGTH, call
from tests.kit.loop_probe import STALL_LIMIT, LoopProbe
from tests.kit.serving import ServerProcess, served, tensor_request

LENET, MOBILENET = "lenet5", "mobilenet_v2"
DUPLICATES = 60_000


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from served(serve_repo, tmp_path_factory.mktemp("loop-stall"))


def _lenet_json(outputs: list[dict] | None = None) -> dict:
    doc: dict = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [0.0] * 1024}
        ]
    }
    if outputs is not None:
        doc["outputs"] = outputs
    return doc


def test_duplicated_outputs_are_refused_before_any_work(server: ServerProcess) -> None:
    cap = RequestLimits().max_outputs
    body = json.dumps(_lenet_json([{"name": "logits"}] * DUPLICATES)).encode()
    request = tensor_request(LENET, np.zeros((1, 1, 32, 32), np.float32))
    for _ in range(DUPLICATES):
        request.outputs.add(name="logits")
    with LoopProbe(server.http_port, server.proc.pid) as probe:
        reply = call(f"{server.http_url}/v2/models/{LENET}/infer", body)
        with pytest.raises(grpc.RpcError) as refused:
            server.stub().ModelInfer(request, timeout=60)
    print(f"60,000 duplicated outputs over HTTP ({len(body):,} B) and gRPC: {probe.summary()}")
    assert reply.status == 400, reply.body[:300]
    assert f"{DUPLICATES:,} outputs" in reply.json()["error"], reply.json()
    assert f"at most {cap}" in reply.json()["error"]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{DUPLICATES:,} outputs" in refused.value.details()
    assert probe.worst < STALL_LIMIT, probe.summary()
    many = {f"p{i}": i for i in range(RequestLimits().max_parameters + 1)}
    url = f"{server.http_url}/v2/models/{LENET}/infer"
    reply = call(url, {**_lenet_json(), "parameters": many})
    assert reply.status == 400 and "max_parameters" in reply.json()["error"], reply.body[:300]
    assert call(url, _lenet_json()).status == 200


def _headers_only(port: int, head: str) -> bytes:
    """Send a request's headers and no body; what the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        return sock.recv(65536)


def test_a_60_mib_binary_header_is_refused_from_its_length(server: ServerProcess) -> None:
    size = 60 << 20
    head = (
        f"POST /v2/models/{LENET}/infer HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/octet-stream\r\n{HEADER_LENGTH}: {size}\r\n"
        f"Content-Length: {size}\r\n\r\n"
    )
    with LoopProbe(server.http_port, server.proc.pid) as probe:
        answer = _headers_only(server.http_port, head)
        filler = b'{"id": "' + b"x" * (size - 12) + b'"}'  # the whole body, sent anyway
        reply = call(
            f"{server.http_url}/v2/models/{LENET}/infer",
            filler,
            {HEADER_LENGTH: str(len(filler)), "Content-Type": "application/octet-stream"},
        )
    print(f"60 MiB binary-extension JSON header: {probe.summary()}")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"max_json_header_kb" in answer
    assert reply.status == 413 or reply.status == 0, reply.body[:300]
    assert probe.worst < STALL_LIMIT, probe.summary()


def test_six_large_json_bodies_at_once(server: ServerProcess) -> None:
    """Each body is parsed whole before its data is found not to fit the shape: the cost
    of the JSON alone, with no inference competing for the two cores."""
    values = np.random.default_rng(0).standard_normal(1_500_000).tolist()
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32]}]}
    doc["inputs"][0]["data"] = values
    body = json.dumps(doc).encode()
    assert len(body) > 100 * HttpLimits().json_on_loop_bytes
    url = f"{server.http_url}/v2/models/{LENET}/infer"
    x = np.random.default_rng(1).standard_normal((8, 3, 224, 224), dtype=np.float32)
    valid = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape)}]}
    valid["inputs"][0]["data"] = x.ravel().tolist()
    reply = call(f"{server.http_url}/v2/models/{MOBILENET}/infer", valid, timeout=300)
    assert reply.status == 200, reply.body[:300]  # a large valid body, through the workers
    logits = np.asarray(reply.json()["outputs"][0]["data"])
    assert logits.shape == (8 * 1000,) and np.isfinite(logits).all()
    with LoopProbe(server.http_port, server.proc.pid) as probe:
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: call(url, body, timeout=300), range(6)))
    print(f"six JSON bodies of {len(body) / 2**20:.0f} MiB at once: {probe.summary()}")
    assert [r.status for r in replies] == [400] * 6, [r.body[:200] for r in replies]
    assert "holds 1500000 values but shape [1, 1, 32, 32] needs 1024" in replies[0].json()["error"]
    assert probe.worst < STALL_LIMIT, probe.summary()


def test_grpc_request_caps_name_count_and_cap(server: ServerProcess) -> None:
    request = tensor_request(LENET, np.zeros((1, 1, 32, 32), np.float32))
    for i in range(RequestLimits().max_inputs + 1):
        request.inputs.add(name=f"extra{i}", datatype="FP32", shape=[1])
    with pytest.raises(grpc.RpcError) as refused:
        server.stub().ModelInfer(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_inputs" in refused.value.details(), refused.value.details()
    request = tensor_request(LENET, np.zeros((1, 1, 32, 32), np.float32))
    for i in range(RequestLimits().max_parameters + 1):
        request.parameters[f"p{i}"].int64_param = i
    with pytest.raises(grpc.RpcError) as refused:
        server.stub().ModelInfer(request, timeout=60)
    assert "max_parameters" in refused.value.details(), refused.value.details()
    assert server.stub().ModelInfer(tensor_request(LENET, np.zeros((1, 1, 32, 32), np.float32)))


def test_request_limits_are_pb_independent() -> None:
    """The check both frontends call, on counts alone."""
    from server.core.errors import InvalidArgument
    from server.core.request_caps import check_counts

    limits = RequestLimits(max_outputs=2)
    check_counts(limits, 1, 2, 0)
    with pytest.raises(InvalidArgument, match="3 outputs; the server accepts at most 2"):
        check_counts(limits, 1, 3, 0)
    assert pb.ModelInferRequest  # the message type the gRPC check reads
