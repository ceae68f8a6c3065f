"""KServe v2 ModelInfer requests for the load generator, serialized once.

The load generator sends pre-serialized bytes through a generic unary call,
so no protobuf work happens per request on the client; these helpers build
those bytes from the server's own ModelMetadata/ModelConfig. No torch, no
ONNX Runtime, no tritonclient.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory

import grpc
import numpy as np

from modelrepo.spec import fixed_dims, preprocess_from
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
MAX_MESSAGE_BYTES = 64 << 20
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Each channel its own TCP connection (otherwise gRPC may share one subchannel).
    ("grpc.use_local_subchannel_pool", 1),
)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    input_name: str
    input_shape: tuple[int, ...]  # one image, -1 dims resolved
    max_batch_size: int


def model_info(url: str, model: str, version: str = "", timeout: float = 10) -> ModelInfo:
    """Input name and one image's shape from ModelMetadata + ModelConfig.

    Dynamic dims (-1) take the model's crop size, as the server's image path does.
    """
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(
            pb.ModelMetadataRequest(name=model, version=version), timeout=timeout
        )
        config = stub.ModelConfig(
            pb.ModelConfigRequest(name=model, version=version), timeout=timeout
        ).config
    tensor = meta.inputs[0]
    dims = fixed_dims(list(tensor.shape)[1:], preprocess_from(config).crop_size)  # no batch axis
    return ModelInfo(model, version, tensor.name, dims, max(config.max_batch_size, 1))


def tensor_request(info: ModelInfo, batch: int = 1, seed: int = 0) -> bytes:
    """A serialized ModelInferRequest carrying a raw FP32 NCHW tensor of ``batch`` images."""
    shape = (batch, *info.input_shape)
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    req = pb.ModelInferRequest(model_name=info.name, model_version=info.version)
    req.inputs.add(name=info.input_name, datatype="FP32", shape=list(shape))
    req.raw_input_contents.append(x.astype("<f4").tobytes())
    return req.SerializeToString()


def image_requests(info: ModelInfo, images: Sequence[bytes], batch: int = 1) -> list[bytes]:
    """Serialized requests of ``batch`` encoded images each (BYTES), cycling through ``images``.

    As many requests as needed so that every image is sent at least once.
    """
    if not images:
        raise ValueError("no images given")
    count = max(1, -(-len(images) // batch))
    out = []
    for r in range(count):
        chosen = [images[(r * batch + i) % len(images)] for i in range(batch)]
        req = pb.ModelInferRequest(model_name=info.name, model_version=info.version)
        req.inputs.add(name=info.input_name, datatype="BYTES", shape=[batch])
        req.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in chosen))
        out.append(req.SerializeToString())
    return out


def check_request(url: str, request: bytes, timeout: float = 30) -> pb.ModelInferResponse:
    """Send one request and parse its answer: fail early, before any timing."""
    with grpc.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(INFER_METHOD, request_serializer=None)
        raw = call(request, timeout=timeout)
    return pb.ModelInferResponse.FromString(raw)


@contextmanager
def shared_memory_request(
    url: str, info: ModelInfo, batch: int = 1, seed: int = 0
) -> Iterator[bytes]:
    """A serialized request whose FP32 input lives in system shared memory (Triton's extension).

    The tensor is written once into a fresh POSIX shared-memory object registered with the
    server, so each request carries a few hundred bytes instead of the tensor; outputs still
    come back in the response (4 kB of logits per image). Unregistered and unlinked on exit.
    """
    shape = (batch, *info.input_shape)
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32).astype("<f4")
    shm = SharedMemory(
        create=True, size=x.nbytes, name=f"cnn-load-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )
    region = f"load-input-{shm.name}"
    try:
        shm.buf[: x.nbytes] = x.tobytes()
        with grpc.insecure_channel(url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.SystemSharedMemoryRegister(
                pb.SystemSharedMemoryRegisterRequest(
                    name=region, key=f"/{shm.name}", offset=0, byte_size=x.nbytes
                ),
                timeout=10,
            )
            try:
                req = pb.ModelInferRequest(model_name=info.name, model_version=info.version)
                tensor = req.inputs.add(name=info.input_name, datatype="FP32", shape=list(shape))
                tensor.parameters["shared_memory_region"].string_param = region
                tensor.parameters["shared_memory_byte_size"].int64_param = x.nbytes
                yield req.SerializeToString()
            finally:
                stub.SystemSharedMemoryUnregister(
                    pb.SystemSharedMemoryUnregisterRequest(name=region), timeout=10
                )
    finally:
        shm.close()
        shm.unlink()
