"""Explanation budgets (issue 25): work withdrawn when the HTTP client hangs up, a
default deadline, occluded copies chunked by bytes and pixels, on a real server.

Before: 8 occlusion requests whose clients hung up made ~8,200 forward passes for
nobody, and one FP32 [1, 3, 896, 896] occlusion request peaked at +2.5 GB (copies
queued max_batch_size at a time).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from devtools.launch import launch
from protos import grpc_service_pb2 as pb
from server.core.explain import chunk, positions
from server.settings.limits import RequestLimits
from server.settings.sources import section_env
from tests.kit.http_kit import HEADER_LENGTH, fp32
from tests.kit.serving import ROOT, ServerProcess, tensor_request
from tests.kit.stress import peak_rss_mib, reset_peak_rss, rss_mib

MODEL = "mobilenet_v2"
PATCH, STRIDE = 16, 8  # 28 x 28 = 784 occluded copies of a 224x224 image
COPIES = len(positions(224, PATCH, STRIDE)) ** 2


def _start(repo: Path, log_dir: Path, request_limits: dict | None = None) -> ServerProcess:
    launched = launch(
        repo,
        *("--model", MODEL),
        log=log_dir / "server.log",
        cwd=ROOT,
        env=section_env("requests", RequestLimits(**(request_limits or {}))),
    )
    return ServerProcess(
        launched.proc, launched.port, launched.metrics_port, launched.log, launched.http_port
    )


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = _start(serve_repo, tmp_path_factory.mktemp("explain-budgets"))
    yield srv
    assert srv.terminate(timeout=60) == 0, srv.output()[-3000:]


def _inferences(srv: ServerProcess) -> int:
    stats = srv.stub().ModelStatistics(pb.ModelStatisticsRequest(name=MODEL))
    return stats.model_stats[0].inference_count


def _explain_body(x: np.ndarray, **params: int | str) -> tuple[bytes, dict[str, str]]:
    raw = fp32(x)
    doc = {
        "parameters": params,
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
    }
    header = json.dumps(doc).encode()
    headers = {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}
    return header + raw, headers


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Host": "localhost"}.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode())
    sock.sendall(body)
    return sock


def _settled(srv: ServerProcess, timeout: float = 60) -> int:
    """The inference count once it stops moving (read twice, a second apart)."""
    deadline, last = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        now = _inferences(srv)
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    return last


def test_hung_up_http_clients_withdraw_their_occlusion_work(server: ServerProcess) -> None:
    clients = 4
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    body, headers = _explain_body(
        x, explain="occlusion", explain_patch=PATCH, explain_stride=STRIDE
    )
    before = _inferences(server)
    path = f"/v2/models/{MODEL}/infer"
    socks = [_post(server.http_port, path, body, headers) for _ in range(clients)]
    deadline = time.monotonic() + 120
    while _inferences(server) - before < 64 and time.monotonic() < deadline:
        time.sleep(0.05)  # the occluded copies are being computed
    for sock in socks:
        sock.close()  # the clients hang up
    done = _settled(server) - before
    print(f"{clients} hung-up occlusion requests: {done} of {clients * (COPIES + 1)} rows run")
    assert done < clients * (COPIES + 1) // 4, done
    ok = server.stub().ModelInfer(tensor_request(MODEL, x))  # and the server serves on
    assert ok.outputs[0].name


def test_explanations_have_a_default_deadline(serve_repo: Path, tmp_path: Path) -> None:
    srv = _start(serve_repo, tmp_path, {"explain_timeout": 1.0})
    try:
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
        request = tensor_request(MODEL, x)
        request.parameters["explain"].string_param = "occlusion"
        request.parameters["explain_patch"].int64_param = PATCH
        request.parameters["explain_stride"].int64_param = STRIDE
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as late:
            srv.stub().ModelInfer(request, timeout=300)  # the client's own deadline: 300 s
        elapsed = time.monotonic() - started
        done = _settled(srv)
        print(f"default explain deadline 1 s: DEADLINE_EXCEEDED after {elapsed:.1f} s, {done} rows")
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, late.value.details()
        assert done < COPIES // 2, done
    finally:
        assert srv.terminate(timeout=60) == 0, srv.output()[-3000:]


def test_occluded_copies_are_chunked_by_pixels(server: ServerProcess) -> None:
    """[1, 3, 896, 896], patch = stride = 224: 16 copies, queued one at a time."""
    limits = RequestLimits()
    assert chunk(limits, (1, 3, 896, 896), 16, 64 << 20) == 1
    assert chunk(limits, (1, 3, 224, 224), 16, 64 << 20) == 16
    assert chunk(RequestLimits(explain_chunk_mb=1), (1, 3, 224, 224), 16, 64 << 20) == 1
    x = np.random.default_rng(0).standard_normal((1, 3, 896, 896), dtype=np.float32)
    request = tensor_request(MODEL, x)
    request.parameters["explain"].string_param = "occlusion"
    request.parameters["explain_patch"].int64_param = 224
    request.parameters["explain_stride"].int64_param = 224
    pid = server.proc.pid
    server.stub().ModelInfer(tensor_request(MODEL, x), timeout=300)  # 896x896 once, warm
    base = rss_mib(pid)
    reset_peak_rss(pid)
    answer = server.stub().ModelInfer(request, timeout=300)
    peak = peak_rss_mib(pid) - base
    print(f"[1, 3, 896, 896] occlusion, 16 copies: peak RSS +{peak:.0f} MiB")
    names = [o.name for o in answer.outputs]
    assert "explanation" in names and list(answer.outputs[-1].shape) == [1, 896, 896]
    assert peak < 512, peak
