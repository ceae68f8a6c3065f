"""Start a real server process for the tests.

Both listeners bind port 0, so the kernel picks free ports and two test runs
can never race for one; the server's ``ready:`` line names the ports.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
_READY = re.compile(r"^ready: gRPC \S+:(\d+), metrics port (-?\d+)", re.MULTILINE)
_STARTED: list[subprocess.Popen[str]] = []


@atexit.register
def _kill_leftovers() -> None:
    """A test that failed before terminate() must not leave a server running."""
    for proc in _STARTED:
        if proc.poll() is None:
            proc.kill()


def free_port() -> int:
    """A port nothing listens on right now (for tests that need an unused address)."""
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
        return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(self.url))

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code (killed and -9 if it ignores the signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

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
    """``python -m server`` on 127.0.0.1, returned once it reports ready."""
    log = log_dir / f"server-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [python, "-m", "server", "--model-repository", str(repository),
             "--host", "127.0.0.1", "--grpc-port", "0",
             "--metrics-host", "127.0.0.1", "--metrics-port", "0", *args],
            cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    _STARTED.append(proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _READY.search(log.read_text())
        if found:
            return ServerProcess(proc, int(found.group(1)), int(found.group(2)), log)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"server not ready after {timeout}s:\n{log.read_text()}")


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
