"""A real server process for the tests (via ``devtools.launch``), and request helpers."""

from __future__ import annotations

import atexit
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from devtools.launch import Launched, launch
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.settings.security import SecuritySettings

ROOT = Path(__file__).resolve().parents[2]
# For the suites that load and unload models: model control is off by default.
EXPLICIT = SecuritySettings(model_control_mode="explicit")
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


class ServerProcess(Launched):
    def stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(self.url))


def start_server(
    repository: Path,
    *args: str,
    log_dir: Path,
    timeout: float = 180,
    python: str = sys.executable,
    cwd: Path = ROOT,
    security: SecuritySettings | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """``python -m server`` on 127.0.0.1, returned once it reports ready."""
    log = log_dir / f"server-{time.monotonic_ns()}.log"
    launched = launch(
        repository, *args, log=log, python=(python,), cwd=cwd, timeout=timeout,
        security=security, env=env,
    )  # fmt: skip
    _STARTED.append(launched.proc)
    return ServerProcess(
        launched.proc, launched.port, launched.metrics_port, launched.log, launched.http_port
    )


def served(repository: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """The body of a fixture that serves ``repository`` until its scope ends."""
    srv = start_server(repository, log_dir=log_dir)
    yield srv
    srv.terminate(timeout=60)


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
