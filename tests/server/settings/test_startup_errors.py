"""Clean start-up errors and a metrics port that serves /metrics only (issue 15).

Was: a port in use ended the server with a Python traceback (``OSError: [Errno
98]`` from the metrics server); the metrics port answered every path, and a
connection sending TLS-like bytes got no reply until the client gave up. Each
case runs the real ``python -m server``.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kit.pki import _issue
from tests.kit.serving import ROOT, ServerProcess, start_server

CLIENT_HELLO = bytes.fromhex("16030100f4010000f00303") + bytes(range(64))


@pytest.fixture(scope="module")
def lenet_repo(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lenet-repo")
    shutil.copytree(serve_repo / "lenet5", path / "lenet5")
    return path


def run_server(repo: Path, *args: str, prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    """Start ``python -m server`` expecting it to give up: (exit code, stderr)."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "server", "--model-repository", str(repo),
         "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-host", "127.0.0.1",
         "--metrics-port", "0", "--no-warmup", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    return proc.returncode, proc.stderr


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("flag", ["--grpc-port", "--metrics-port"])
def test_a_port_in_use_is_one_line(lenet_repo: Path, busy_port: int, flag: str) -> None:
    code, stderr = run_server(lenet_repo, flag, str(busy_port))
    line = one_error_line(stderr)
    assert code != 0
    assert f"127.0.0.1:{busy_port}" in line and "in use" in line, line
    assert ("gRPC" if flag == "--grpc-port" else "metrics") in line, line


def test_an_unreadable_repository_is_one_line(lenet_repo: Path, tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's read-anything capability")
    locked = tmp_path / "locked"
    shutil.copytree(lenet_repo, locked)
    locked.chmod(0)
    try:  # as root, only without CAP_DAC_OVERRIDE does mode 000 keep anyone out
        drop = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
        code, stderr = run_server(locked, prefix=drop)
    finally:
        locked.chmod(0o755)
    line = one_error_line(stderr)
    assert code != 0 and str(locked) in line and "not readable" in line, line


@pytest.mark.parametrize("broken", ["garbage", "key", "mismatch", "missing", "client-ca"])
def test_bad_tls_files_are_one_line(lenet_repo: Path, tmp_path: Path, broken: str) -> None:
    ca = _issue(tmp_path, "ca", None, ca=True)
    _issue(tmp_path, "server", ca, server=True)
    _issue(tmp_path, "client", ca)
    cert, key, extra = tmp_path / "server.pem", tmp_path / "server.key", []
    named = key
    if broken == "garbage":
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    elif broken == "key":
        key.write_bytes(b"\x00garbage")
    elif broken == "mismatch":
        key = named = tmp_path / "client.key"
    elif broken == "missing":
        key = named = tmp_path / "no-such.key"
    else:
        named = tmp_path / "not-a-ca.pem"
        named.write_text("hello")
        extra = ["--tls-client-ca", str(named)]
    code, stderr = run_server(lenet_repo, "--tls-cert", str(cert), "--tls-key", str(key), *extra)
    line = one_error_line(stderr)
    assert code != 0 and str(named) in line, line
    assert "E0000" not in stderr, stderr  # grpc's C-level log lines never came into it


@pytest.fixture(scope="module")
def server(lenet_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(lenet_repo, "--no-warmup", log_dir=tmp_path_factory.mktemp("metrics"))
    yield srv
    assert srv.terminate() == 0, srv.output()[-3000:]


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_metrics_port_serves_metrics_only(server: ServerProcess) -> None:
    status, body = get(server.metrics_port, "/metrics")
    assert status == 200 and b"inference_request_duration_seconds" in body
    for path in ("/../../etc/passwd", "/", "/metricsx", "/favicon.ico"):
        status, body = get(server.metrics_port, path)
        assert status == 404 and b"inference" not in body, (path, status)


def test_tls_garbage_on_the_metrics_port_is_closed_at_once(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.metrics_port), timeout=60) as sock:
        sock.sendall(CLIENT_HELLO)
        assert sock.recv(4096) == b""  # closed; was: no answer until the client gave up
    assert get(server.metrics_port, "/metrics")[0] == 200
