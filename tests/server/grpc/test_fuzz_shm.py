"""Shared-memory abuse, generated (hypothesis), against a real server process.

A client on the same host owns the files it registers and can do anything to
them: make them symlinks, FIFOs or directories, register past their end, shrink
them before or between requests, point inputs and outputs anywhere. Whatever it
does, the server answers with a code that names the client's mistake (never
INTERNAL, never a signal), writes nothing outside /dev/shm, and a stream of
valid requests keeps succeeding meanwhile. Cases are derandomized;
FUZZ_EXAMPLES=N digs deeper.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos import grpc_service_pb2 as pb
from tests.kit.fuzz_kit import FUZZ as FUZZ_ALL
from tests.kit.serving import ServerProcess, digits, start_server, tensor_request
from tests.kit.stress import ValidStream
from tests.server.core.test_shared_memory import LENET_INPUT, LENET_OUTPUT, shm_params

FUZZ = settings(FUZZ_ALL, max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")))
ALLOWED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS"}
VICTIM = b"outside /dev/shm, must never change" * 64
SIZE = 64 << 10


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(serve_repo, "--model", "lenet5", log_dir=tmp_path_factory.mktemp("fz"))
    yield srv
    assert srv.terminate() == 0, srv.output()[-3000:]
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("victim") / "file"
    path.write_bytes(VICTIM)
    return path


@pytest.fixture(scope="module")
def stream(server: ServerProcess) -> Iterator[ValidStream]:
    with ValidStream(server, [tensor_request("lenet5", digits(2))]) as s:
        yield s
    assert s.outcomes["OK"] > 0 and set(s.outcomes) == {"OK"}, (s.outcomes, s.messages[:5])


def _make(path: Path, kind: str, size: int, victim: Path) -> None:
    if kind == "file":
        path.write_bytes(bytes(size))
    elif kind == "symlink":
        path.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


def _request(region: str, offset: int, size: int, rows: int, as_output: bool):
    if as_output:
        req = tensor_request("lenet5", digits(rows))
        shm_params(req.outputs.add(name="logits"), region, size, offset)
    else:
        req = pb.ModelInferRequest(model_name="lenet5")
        tensor = req.inputs.add(name="input", datatype="FP32", shape=[rows, 1, 32, 32])
        shm_params(tensor, region, size, offset)
    return req


sizes = st.one_of(st.integers(0, SIZE + 64), st.sampled_from([SIZE, LENET_INPUT, LENET_OUTPUT]))
case = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["file", "file", "file", "symlink", "fifo", "directory", "none"]),
        "offset": st.integers(0, SIZE),
        "byte_size": st.one_of(sizes, st.sampled_from([2**40, 2**62])),
        "shrink_to": st.one_of(st.none(), sizes),  # between registration and use
        "use_offset": st.integers(0, SIZE),
        "use_size": sizes,
        "rows": st.integers(1, 3),
        "as_output": st.booleans(),
        "twice": st.booleans(),
    }
)


@FUZZ
@given(c=case)
def test_shared_memory_abuse(server, stream, victim: Path, c: dict) -> None:
    stub = server.stub()
    path = Path("/dev/shm") / f"cnn-fuzz-{uuid.uuid4().hex[:12]}"
    codes = []

    def call(fn) -> None:
        try:
            fn()
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
            assert exc.code().name in ALLOWED, (exc.code(), exc.details(), c)

    _make(path, c["kind"], SIZE, victim)
    try:
        register = pb.SystemSharedMemoryRegisterRequest(
            name="r", key=f"/{path.name}", offset=c["offset"], byte_size=c["byte_size"]
        )
        for _ in range(2 if c["twice"] else 1):
            call(lambda: stub.SystemSharedMemoryRegister(register, timeout=30))
        if c["shrink_to"] is not None and c["kind"] == "file":
            os.truncate(path, c["shrink_to"])
        req = _request("r", c["use_offset"], c["use_size"], c["rows"], c["as_output"])
        call(lambda: stub.ModelInfer(req, timeout=30))
    finally:
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(), timeout=30)
        _remove(path)
    assert c["kind"] == "file" or codes[0] != "OK", codes  # only regular files register
    assert victim.read_bytes() == VICTIM
    assert server.proc.poll() is None, server.output()[-3000:]
