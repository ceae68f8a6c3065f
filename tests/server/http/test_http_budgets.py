"""HTTP budgets (issue 25, server/http/budgets.py), each attacked on a real server.

Before: 30 connections each sending a 60 MB body one byte short pinned 1.8 GB and
were never closed; ``Expect: 100-continue`` with a 1 GB Content-Length was answered
100 Continue; idle and half-header connections were kept 3,630 s; nothing capped
the connections one client held. The server here runs with small budgets so each
attack finishes in seconds (passed in as CNN_SERVING_HTTP__* variables).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.http.budgets import throttle_loop_errors
from server.settings.limits import HttpLimits
from server.settings.sources import section_env
from tests.kit.http_kit import call
from tests.kit.loop_probe import STALL_LIMIT, LoopProbe, tree_rss_mib
from tests.kit.serving import ROOT, ServerProcess

LENET = "lenet5"
MiB = 1 << 20
LIMITS = {
    "body_timeout": 1.0,
    "keepalive_timeout": 2.0,
    "max_connections": 40,
    "max_connections_per_peer": 30,
    "max_body_mb_in_flight": 24,
}


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from devtools.launch import launch

    log = tmp_path_factory.mktemp("budgets") / "server.log"
    launched = launch(
        serve_repo,
        "--model",
        LENET,
        log=log,
        cwd=ROOT,
        env=section_env("http", HttpLimits(**LIMITS)),
    )
    srv = ServerProcess(
        launched.proc, launched.port, launched.metrics_port, launched.log, launched.http_port
    )
    yield srv
    assert srv.terminate(timeout=60) == 0, srv.output()[-3000:]
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return sock


def _head(path: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _read_to_eof(sock: socket.socket) -> bytes:
    """Everything until the server closes (a socket timeout fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _health(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return sock.recv(65536)


def test_stalled_bodies_are_closed_and_the_budget_refuses_more(server: ServerProcess) -> None:
    infer = f"/v2/models/{LENET}/infer"
    size = 4 * MiB
    rss_before = tree_rss_mib(server.proc.pid)
    with LoopProbe(server.http_port, server.proc.pid) as probe:
        stalled = []
        for _ in range(6):  # 24 MiB: the whole budget
            sock = _connect(server.http_port)
            sock.sendall(_head(infer, size) + b" " * (size - 1))
            stalled.append(sock)
        started = time.monotonic()
        over = _connect(server.http_port)
        over.sendall(_head(infer, size))
        answers = [_read_to_eof(sock) for sock in stalled]
        elapsed = time.monotonic() - started
        refused = over.recv(65536)  # the server then lingers, reading what the client sends
    for sock in [*stalled, over]:
        sock.close()
    print(f"6 stalled 4 MiB bodies: closed after {elapsed:.1f} s; {probe.summary()}")
    assert refused.startswith(b"HTTP/1.1 503"), refused[:300]
    assert b"max_body_mb_in_flight" in refused
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"body_timeout" in answer
    assert probe.worst < STALL_LIMIT, probe.summary()
    # the budget came back: a 4 MiB body is read again (and is not JSON)
    reply = call(f"{server.http_url}{infer}", b"{" * size, {"Content-Type": "application/json"})
    assert reply.status == 400 and "not valid JSON" in reply.json()["error"], reply.body[:300]
    print(f"RSS {rss_before:.0f} -> {tree_rss_mib(server.proc.pid):.0f} MiB after")


def test_oversized_bodies_get_413_before_a_byte_is_read(server: ServerProcess) -> None:
    infer = f"/v2/models/{LENET}/infer"
    with _connect(server.http_port) as sock:
        sock.sendall(_head(infer, 1 << 30, "Expect: 100-continue\r\n"))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]  # not 100 Continue
    assert b"1,073,741,824 bytes" in answer and b"--max-message-mb" in answer
    with _connect(server.http_port) as sock:
        sock.sendall(_head(infer, 1 << 30))  # no Expect: the answer comes without the body
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    with _connect(server.http_port) as sock:
        sock.sendall(_head("/v2/repository/index", 1 << 20))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413") and b"max_control_body_kb" in answer, answer
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32],
                     "data": [0.0] * 1024}]}
    ).encode()  # fmt: skip
    with _connect(server.http_port) as sock:
        sock.sendall(_head(infer, len(body), "Expect: 100-continue\r\n"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_idle_and_half_sent_connections_are_closed(server: ServerProcess) -> None:
    keepalive = LIMITS["keepalive_timeout"]
    idle, half, used = (_connect(server.http_port) for _ in range(3))
    half.sendall(b"POST /v2/models/lenet5/infer HTTP/1.1\r\nHost: local")
    assert _health(used).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    for sock in (idle, half, used):
        assert _read_to_eof(sock) in (b"",), "the server answered instead of closing"
        sock.close()
    elapsed = time.monotonic() - started
    print(f"idle, half-header and kept-alive connections closed after {elapsed:.1f} s")
    assert elapsed < keepalive * 10


def test_connections_are_capped_per_peer_and_in_total(server: ServerProcess) -> None:
    port, open_ = server.http_port, []
    try:
        for _ in range(LIMITS["max_connections_per_peer"]):
            open_.append(_connect(port))
            assert _health(open_[-1]).startswith(b"HTTP/1.1 200")
        with _connect(port) as sock:  # one more from the same address
            refused = _read_to_eof(sock)
        assert refused.startswith(b"HTTP/1.1 503") and b"max_connections_per_peer" in refused
        for _ in range(LIMITS["max_connections"] - len(open_)):  # another client: admitted
            open_.append(_connect(port, "127.0.0.2"))
            assert _health(open_[-1]).startswith(b"HTTP/1.1 200")
        with _connect(port, "127.0.0.3") as sock:
            refused = _read_to_eof(sock)
        assert refused.startswith(b"HTTP/1.1 503") and b"max_connections)" in refused, refused
    finally:
        for sock in open_:
            sock.close()
    deadline = time.monotonic() + 30  # closed sockets leave the gate as the server sees them
    while time.monotonic() < deadline:
        with _connect(port, "127.0.0.3") as sock:
            if _health(sock).startswith(b"HTTP/1.1 200"):
                break
    else:
        pytest.fail("the gate did not give the closed connections back")


def test_repeated_loop_errors_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """EMFILE on accept: asyncio reports each failure; the log gets one line and a count."""
    loop = asyncio.new_event_loop()
    try:
        throttle_loop_errors(loop, interval=60)
        error = OSError(24, "Too many open files")
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(10_000):
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": error}
                )
            loop.call_exception_handler({"message": "something else", "exception": error})
    finally:
        loop.close()
    lines = [r for r in caplog.records if r.name == "asyncio"]
    assert len(lines) == 2, [r.getMessage() for r in lines]
