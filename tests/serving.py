"""Start a real server process on free localhost ports, for the server tests."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos import grpc_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
_STARTED: list[subprocess.Popen[str]] = []


@atexit.register
def _kill_leftovers() -> None:
    """A test that failed before terminate() must not leave a server running."""
    for proc in _STARTED:
        if proc.poll() is None:
            proc.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        channel = grpc.insecure_channel(self.url)
        return pb_grpc.GRPCInferenceServiceStub(channel)

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text()


def start_server(
    repository: Path,
    *args: str,
    log_dir: Path,
    timeout: float = 180,
    python: str = sys.executable,
    cwd: Path = ROOT,
) -> ServerProcess:
    port, metrics_port = free_port(), free_port()
    log = log_dir / f"server-{port}.log"
    fh = open(log, "w")  # noqa: SIM115 - the process owns it until it exits
    proc = subprocess.Popen(
        [
            python,
            "-m",
            "server",
            "--model-repository",
            str(repository),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            "--metrics-host",
            "127.0.0.1",
            *args,
        ],
        cwd=cwd,
        stdout=fh,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    _STARTED.append(proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "ready:" in log.read_text():
            return ServerProcess(proc, port, metrics_port, log)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"server not ready after {timeout}s:\n{log.read_text()}")
