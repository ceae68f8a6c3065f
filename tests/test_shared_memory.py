"""Triton's system shared-memory extension against a real server process.

Regions are real POSIX shared memory (``multiprocessing.shared_memory``, the same
/dev/shm objects tritonclient's ``utils.shared_memory`` creates); logits are checked
against ONNX Runtime in this process. tritonclient's own shared-memory calls are
exercised in test_tritonclient_control.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from server.shared_memory import SharedMemoryManager, ShmRef
from tests.serving import ServerProcess, digits, in_process, logits_of, start_server

LENET_INPUT = 1 * 32 * 32 * 4  # bytes of one lenet5 image, FP32
LENET_OUTPUT = 10 * 4


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(serve_repo, "--model", "lenet5", log_dir=tmp_path_factory.mktemp("shm"))
    yield srv
    assert srv.terminate() == 0, srv.output()[-3000:]


@pytest.fixture
def shm() -> Iterator[SharedMemory]:
    """A 64 kB POSIX shared-memory object, unlinked afterwards."""
    block = SharedMemory(create=True, size=64 << 10, name=f"cnn-test-{uuid.uuid4().hex[:12]}")
    yield block
    block.close()
    block.unlink()


@pytest.fixture
def stub(server: ServerProcess) -> Iterator:
    stub = server.stub()
    yield stub
    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())  # all


def register(stub, name: str, block: SharedMemory, offset: int = 0, size: int | None = None):
    return stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(
            name=name, key=f"/{block.name}", offset=offset, byte_size=size or block.size - offset
        )
    )


def shm_params(tensor, region: str, size: int, offset: int = 0) -> None:
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = size
    if offset:
        tensor.parameters["shared_memory_offset"].int64_param = offset


def shm_request(region: str, rows: int, offset: int = 0) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="lenet5")
    tensor = req.inputs.add(name="input", datatype="FP32", shape=[rows, 1, 32, 32])
    shm_params(tensor, region, rows * LENET_INPUT, offset)
    return req


def error_of(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_register_status_unregister(stub, shm: SharedMemory) -> None:
    register(stub, "in", shm, offset=4096, size=8192)
    status = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="in"))
    region = status.regions["in"]
    assert (region.key, region.offset, region.byte_size) == (f"/{shm.name}", 4096, 8192)
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert "system_shared_memory" in meta.extensions

    err = error_of(lambda: register(stub, "in", shm))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "'in'" in err.details()

    stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="in"))
    err = error_of(
        lambda: stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="in"))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    everything = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
    assert "in" not in everything.regions


@pytest.mark.parametrize(
    ("key", "offset", "size", "code", "words"),
    [
        ("/cnn-no-such-object", 0, 100, grpc.StatusCode.NOT_FOUND, "does not exist"),
        ("/../etc/passwd", 0, 100, grpc.StatusCode.INVALID_ARGUMENT, "POSIX shared-memory"),
        ("no-slash", 0, 100, grpc.StatusCode.INVALID_ARGUMENT, "POSIX shared-memory"),
        (None, 60 << 10, 8 << 10, grpc.StatusCode.INVALID_ARGUMENT, "exceeds"),
        (None, 0, 0, grpc.StatusCode.INVALID_ARGUMENT, "byte_size 0"),
    ],
)
def test_bad_registrations_are_refused_with_the_reason(
    stub, shm: SharedMemory, key: str | None, offset: int, size: int, code, words: str
) -> None:
    request = pb.SystemSharedMemoryRegisterRequest(
        name="bad", key=key or f"/{shm.name}", offset=offset, byte_size=size
    )
    err = error_of(lambda: stub.SystemSharedMemoryRegister(request))
    assert err.code() == code and words in err.details()


def test_inputs_and_logits_through_shared_memory(stub, shm: SharedMemory, serve_repo: Path) -> None:
    x = digits(3, seed=7)
    shm.buf[: x.nbytes] = x.tobytes()
    out_at = 32 << 10
    register(stub, "io", shm)
    req = shm_request("io", 3)
    out = req.outputs.add(name="logits")
    shm_params(out, "io", 3 * LENET_OUTPUT, offset=out_at)
    resp = stub.ModelInfer(req)
    assert list(resp.outputs[0].shape) == [3, 10]
    assert resp.outputs[0].parameters["shared_memory_region"].string_param == "io"
    assert resp.raw_output_contents[0] == b""  # the logits went to the region
    got = np.frombuffer(shm.buf[out_at : out_at + 3 * LENET_OUTPUT], dtype="<f4").reshape(3, 10)
    want = in_process(serve_repo, "lenet5", x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.ptp(want) > 0.1  # a real comparison, not of constants


def test_shared_memory_input_with_logits_in_the_response(stub, shm: SharedMemory, serve_repo):
    x = digits(2, seed=3)
    offset = 1024  # inside the region, which itself starts 512 bytes into the object
    shm.buf[512 + offset : 512 + offset + x.nbytes] = x.tobytes()
    register(stub, "in", shm, offset=512, size=16 << 10)
    resp = stub.ModelInfer(shm_request("in", 2, offset=offset))
    np.testing.assert_allclose(
        logits_of(resp), in_process(serve_repo, "lenet5", x), rtol=1e-4, atol=1e-5
    )


def test_classification_strings_into_shared_memory(stub, shm: SharedMemory) -> None:
    x = digits(1, seed=1)
    shm.buf[: x.nbytes] = x.tobytes()
    register(stub, "io", shm)
    req = shm_request("io", 1)
    out = req.outputs.add(name="logits")
    out.parameters["classification"].int64_param = 3
    shm_params(out, "io", 4096, offset=8192)
    resp = stub.ModelInfer(req)
    assert resp.outputs[0].datatype == "BYTES" and list(resp.outputs[0].shape) == [1, 3]
    raw = bytes(shm.buf[8192 : 8192 + 4096])
    length = int.from_bytes(raw[:4], "little")
    score, index, _label = raw[4 : 4 + length].decode().split(":", 2)
    assert 0 <= int(index) < 10 and float(score) != 0


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: shm_params(r.inputs[0], "nowhere", LENET_INPUT), "'nowhere' is not registered"),
        (lambda r: shm_params(r.inputs[0], "small", LENET_INPUT, offset=1024), "outside"),
        (lambda r: r.raw_input_contents.append(b"\0" * LENET_INPUT), "one or the other"),
        (lambda r: shm_params(r.inputs[0], "small", LENET_INPUT - 4), "needs 4096"),
        (
            lambda r: shm_params(r.outputs.add(name="logits"), "small", 8),
            "needs 40 bytes",
        ),
        (
            lambda r: r.inputs[0].parameters.__delitem__("shared_memory_region"),
            "without shared_memory_region",
        ),
    ],
)
def test_bad_shared_memory_requests_name_the_problem(
    stub, shm: SharedMemory, server: ServerProcess, change, words: str
) -> None:
    register(stub, "small", shm, size=LENET_INPUT + 512)
    req = shm_request("small", 1)
    change(req)
    err = error_of(lambda: stub.ModelInfer(req))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.details(), err.details()
    resp = stub.ModelInfer(shm_request("small", 1))  # and the server keeps serving
    assert list(resp.outputs[0].shape) == [1, 10]


def test_a_server_without_shared_memory_refuses_it_clearly(
    serve_repo: Path, shm: SharedMemory, tmp_path: Path
) -> None:
    srv = start_server(serve_repo, "--model", "lenet5", "--no-shared-memory", log_dir=tmp_path)
    try:
        stub = srv.stub()
        err = error_of(lambda: register(stub, "in", shm))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--no-shared-memory" in err.details()
        meta = stub.ServerMetadata(pb.ServerMetadataRequest())
        assert "system_shared_memory" not in meta.extensions
    finally:
        assert srv.terminate() == 0


def test_manager_copies_inputs_so_unregister_never_pulls_memory(shm: SharedMemory) -> None:
    manager = SharedMemoryManager(shm_dir=Path("/dev/shm"))
    shm.buf[:4] = b"abcd"
    manager.register("r", f"/{shm.name}", 0, 4096)
    data = manager.read(ShmRef("r", 0, 4), "input")
    manager.unregister("r")  # closes the mapping; the copy stays valid
    assert data == b"abcd"
    with pytest.raises(Exception, match="not registered"):
        manager.read(ShmRef("r", 0, 4), "input")
