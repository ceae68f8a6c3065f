"""Triton's system shared-memory extension against a real server process.

Regions are real POSIX shared memory (``multiprocessing.shared_memory``, the same
/dev/shm objects tritonclient's ``utils.shared_memory`` creates); logits are checked
against ONNX Runtime in this process. tritonclient's own shared-memory calls are
exercised in test_tritonclient_control.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from server.core.shared_memory import SharedMemoryManager, ShmRef
from tests.kit.serving import (
    ServerProcess,
    digits,
    in_process,
    logits_of,
    start_server,
    tensor_request,
)

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


# --- a client turning its own file against the server (issue 15) ---------------------
@pytest.fixture
def shm_path() -> Iterator[Path]:
    """A name in /dev/shm for a test to create as it likes; removed afterwards."""
    path = Path("/dev/shm") / f"cnn-test-{uuid.uuid4().hex[:12]}"
    yield path
    path.unlink(missing_ok=True)


def test_a_file_truncated_after_registration_is_an_error_not_a_crash(
    stub, server: ServerProcess, shm_path: Path
) -> None:
    """Was SIGBUS (exit 135, nothing logged): the server read its mapping past the file."""
    shm_path.write_bytes(bytes(1 << 20))
    stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name="t", key=f"/{shm_path.name}", byte_size=1 << 20)
    )
    os.truncate(shm_path, 0)
    err = error_of(lambda: stub.ModelInfer(shm_request("t", 1)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "region 't'" in err.details() and "now has 0" in err.details(), err.details()
    req = tensor_request("lenet5", digits(1))
    shm_params(req.outputs.add(name="logits"), "t", LENET_OUTPUT)
    err = error_of(lambda: stub.ModelInfer(req))  # an output into it: refused too
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "now has 0" in err.details()
    assert shm_path.stat().st_size == 0  # nothing was written through
    os.truncate(shm_path, 1 << 20)  # grown back: usable again
    assert list(stub.ModelInfer(shm_request("t", 1)).outputs[0].shape) == [1, 10]
    assert server.proc.poll() is None


def test_a_symlink_out_of_dev_shm_is_never_followed(
    stub, server: ServerProcess, shm_path: Path, tmp_path: Path
) -> None:
    """Was: /dev/shm/x -> another file registered, and an output overwrote that file."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious" * 1024)
    shm_path.symlink_to(victim)
    request = pb.SystemSharedMemoryRegisterRequest(
        name="s", key=f"/{shm_path.name}", byte_size=4096
    )
    err = error_of(lambda: stub.SystemSharedMemoryRegister(request))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "symbolic link" in err.details(), err.details()
    assert victim.read_bytes() == b"precious" * 1024
    assert server.proc.poll() is None


def test_a_file_swapped_for_a_symlink_after_registration_is_not_written_through(
    stub, shm: SharedMemory, tmp_path: Path
) -> None:
    """The path is never opened again: the output lands in the file that was registered."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious" * 1024)
    register(stub, "io", shm)
    path = Path("/dev/shm") / shm.name
    path.unlink()
    path.symlink_to(victim)
    req = tensor_request("lenet5", digits(1))
    shm_params(req.outputs.add(name="logits"), "io", LENET_OUTPUT)
    stub.ModelInfer(req)
    assert victim.read_bytes() == b"precious" * 1024
    assert any(shm.buf[:LENET_OUTPUT])  # the logits went to the registered object
    path.unlink()
    path.write_bytes(b"")  # for the fixture's unlink


@pytest.mark.parametrize("kind", ["fifo", "directory", "dot-dot"])
def test_keys_that_are_not_regular_files_are_refused(stub, shm_path: Path, kind: str) -> None:
    key = "/.." if kind == "dot-dot" else f"/{shm_path.name}"
    if kind == "fifo":
        os.mkfifo(shm_path)
    elif kind == "directory":
        shm_path.mkdir()
    request = pb.SystemSharedMemoryRegisterRequest(name="k", key=key, byte_size=16)
    try:
        err = error_of(lambda: stub.SystemSharedMemoryRegister(request, timeout=30))
    finally:
        if shm_path.is_dir():
            shm_path.rmdir()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert repr(key) in err.details(), err.details()


def test_a_region_larger_than_a_message_is_not_read(stub, shm_path: Path) -> None:
    """A sparse 1 GiB file costs the client nothing; copying it would cost the server 1 GiB."""
    with shm_path.open("wb") as f:
        f.truncate(1 << 30)
    stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name="big", key=f"/{shm_path.name}", byte_size=1 << 30)
    )
    req = pb.ModelInferRequest(model_name="lenet5")
    tensor = req.inputs.add(name="input", datatype="FP32", shape=[1 << 18, 1, 32, 32])
    shm_params(tensor, "big", 1 << 30)
    err = error_of(lambda: stub.ModelInfer(req))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the largest input" in err.details(), err.details()
