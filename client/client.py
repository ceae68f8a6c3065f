"""A thin typed client for the KServe v2 gRPC service, over the project's own stubs.

Why not tritonclient: its generated protobuf module defines the same
``inference.*`` symbols as ``protos/``, and protobuf refuses both in one
process. This client uses only ``protos`` and grpc, never torch, so it runs
from a serving-only install. Every gRPC failure surfaces as ``ClientError``
with a message fit to print.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc

__all__ = [
    "DEFAULT_URL",
    "MAX_MESSAGE_BYTES",
    "Classification",
    "ClientError",
    "InferenceClient",
    "TlsConfig",
]

DEFAULT_URL = "localhost:8001"
# Same as the server's default: a batch of 64 images at 512x512 FP32 fits.
MAX_MESSAGE_BYTES = 64 << 20
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

_T = TypeVar("_T")
# The request's input tensor and its raw bytes (None: the data is in ``contents``).
_Input = tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]
# The response's output tensor and its raw bytes (None: the server used ``contents``).
_Output = tuple[pb.ModelInferResponse.InferOutputTensor, bytes | None]
# gRPC's own wording when no TCP connection could be made (not a server-sent UNAVAILABLE).
_UNREACHABLE_HINTS = (
    "failed to connect",
    "connection refused",
    "dns resolution failed",
    "name resolution",
    "no route to host",
    "network is unreachable",
    "connection reset",
)


class ClientError(Exception):
    """Any failure talking to the server; ``code`` is the gRPC status when there was one."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the server: ``ca`` checks its certificate (None: the system's roots);
    ``cert``/``key`` are this client's own, for servers that require mutual TLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ClientError("a TLS client certificate and its key go together")

        def read(path: Path | None, what: str) -> bytes | None:
            try:
                return path.read_bytes() if path is not None else None
            except OSError as exc:
                raise ClientError(f"cannot read TLS {what} '{path}': {exc.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca, "CA"),
            private_key=read(self.key, "key"),
            certificate_chain=read(self.cert, "certificate"),
        )


@dataclass(frozen=True)
class Classification:
    """One entry of the classification extension's "score:index:label" strings."""

    score: float
    index: int
    label: str

    @classmethod
    def parse(cls, text: bytes | str) -> Classification:
        """Split at the first two colons only: ImageNet labels may hold colons themselves."""
        raw = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        parts = raw.split(":", 2)
        try:
            return cls(float(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else "")
        except (ValueError, IndexError) as exc:
            raise ClientError(f"malformed classification entry {raw!r}") from exc


def split_bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """Triton's BYTES serialisation: each element prefixed by its 4-byte LE length."""
    out: list[bytes] = []
    offset = 0
    while offset + 4 <= len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        out.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw) or len(out) != count:
        raise ClientError(
            f"malformed BYTES output: expected {count} elements in {len(raw)} bytes, "
            f"parsed {len(out)}"
        )
    return out


def _as_fp32(array: np.ndarray) -> np.ndarray:
    """Little-endian, C-contiguous float32: what ``raw_input_contents`` must hold."""
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ClientError(f"input must be a real numeric array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype="<f4")


class InferenceClient:
    """Blocking client for one server; a context manager that closes its channel.

    ``timeout`` (seconds, ``None`` for none) is the deadline of every call.
    """

    def __init__(
        self, url: str = DEFAULT_URL, timeout: float | None = 30, tls: TlsConfig | None = None
    ) -> None:
        self.url = url
        self.timeout = timeout
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(url, options=options)
        else:
            self._channel = grpc.secure_channel(url, tls.credentials(), options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    # --- lifecycle ----------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------
    def _call(self, method: Callable[..., _T], request: object) -> _T:
        """One unary RPC with the client's deadline; gRPC errors become ``ClientError``."""
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> ClientError:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        details: str = exc.details() or ""  # type: ignore[attr-defined]
        lowered = details.lower()
        if code == grpc.StatusCode.UNAVAILABLE and ("ssl" in lowered or "handshake" in lowered):
            return ClientError(f"TLS with {self.url} failed (UNAVAILABLE: {details})", code)
        if code == grpc.StatusCode.UNAVAILABLE and any(h in lowered for h in _UNREACHABLE_HINTS):
            return ClientError(f"cannot reach server at {self.url} — is it running?", code)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ClientError(
                f"no answer from {self.url} within {self.timeout} s (DEADLINE_EXCEEDED: {details})",
                code,
            )
        return ClientError(f"{code.name}: {details}", code)

    # --- health and metadata --------------------------------------------------
    def live(self) -> bool:
        return self._call(self._stub.ServerLive, pb.ServerLiveRequest()).live

    def ready(self) -> bool:
        return self._call(self._stub.ServerReady, pb.ServerReadyRequest()).ready

    def model_ready(self, model: str, version: str = "") -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        return self._call(self._stub.ModelReady, request).ready

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest())

    def list_models(self, ready_only: bool = False) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """Every model (version) in the repository, with its state and the reason if not READY."""
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return list(self._call(self._stub.RepositoryIndex, request).models)

    def metadata(self, model: str, version: str = "") -> pb.ModelMetadataResponse:
        request = pb.ModelMetadataRequest(name=model, version=version)
        return self._call(self._stub.ModelMetadata, request)

    def config(self, model: str, version: str = "") -> mc.ModelConfig:
        request = pb.ModelConfigRequest(name=model, version=version)
        return self._call(self._stub.ModelConfig, request).config

    def statistics(self, model: str = "", version: str = "") -> list[pb.ModelStatistics]:
        """Per model version; an empty ``model`` asks for every loaded model."""
        request = pb.ModelStatisticsRequest(name=model, version=version)
        return list(self._call(self._stub.ModelStatistics, request).model_stats)

    # --- inference --------------------------------------------------------------
    def _infer(self, model: str, version: str, request_input: _Input, top_k: int) -> _Output:
        """Send one input; return the ``logits`` output and its raw bytes (if sent raw)."""
        tensor, raw_input = request_input
        output = pb.ModelInferRequest.InferRequestedOutputTensor(name=OUTPUT_NAME)
        if top_k:
            output.parameters["classification"].int64_param = top_k
        request = pb.ModelInferRequest(
            model_name=model, model_version=version, inputs=[tensor], outputs=[output]
        )
        if raw_input is not None:
            request.raw_input_contents.append(raw_input)
        response = self._call(self._stub.ModelInfer, request)
        for i, out in enumerate(response.outputs):
            if out.name == OUTPUT_NAME:
                raw = (
                    response.raw_output_contents[i]
                    if i < len(response.raw_output_contents)
                    else None
                )
                return out, raw
        names = [o.name for o in response.outputs]
        raise ClientError(f"model '{model}' answered without output '{OUTPUT_NAME}': {names}")

    @staticmethod
    def _fp32_input(array: np.ndarray) -> _Input:
        data = _as_fp32(array)
        tensor = pb.ModelInferRequest.InferInputTensor(
            name=INPUT_NAME, datatype="FP32", shape=list(data.shape)
        )
        return tensor, data.tobytes()

    def infer_request(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """A ModelInfer as built by the caller (parameters such as ``explain``)."""
        return self._call(self._stub.ModelInfer, request)

    def infer(self, model: str, array: np.ndarray, version: str = "") -> np.ndarray:
        """Raw round trip: an NCHW batch (cast to FP32) in, the model's FP32 logits out."""
        out, raw = self._infer(model, version, self._fp32_input(array), top_k=0)
        if out.datatype != "FP32":
            raise ClientError(f"expected FP32 output '{out.name}', got {out.datatype}")
        shape = tuple(int(d) for d in out.shape)
        values = (
            np.frombuffer(raw, dtype="<f4")
            if raw is not None
            else np.asarray(out.contents.fp32_contents, dtype="<f4")
        )
        if values.size != int(np.prod(shape, dtype=np.int64)):
            raise ClientError(f"output '{out.name}': {values.size} values for shape {list(shape)}")
        return values.reshape(shape).astype(np.float32)

    def classify(
        self, model: str, images: Sequence[bytes], top_k: int = 5, version: str = ""
    ) -> list[list[Classification]]:
        """Encoded JPEG/PNG files, decoded and preprocessed by the server; top-k per image."""
        if not images:
            raise ClientError("classify needs at least one image")
        tensor = pb.ModelInferRequest.InferInputTensor(
            name=INPUT_NAME, datatype="BYTES", shape=[len(images)]
        )
        tensor.contents.bytes_contents.extend(bytes(image) for image in images)
        return self._classifications(model, version, (tensor, None), top_k)

    def classify_pixels(
        self, model: str, pixels: np.ndarray, top_k: int = 5, version: str = ""
    ) -> list[list[Classification]]:
        """Decoded UINT8 [N, H, W, C] pixels (RGB, or 1 channel for greyscale models),
        resized/cropped/normalised by the server: a quarter of the FP32 bytes."""
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 4:
            raise ClientError(
                f"pixels must be a uint8 [N, H, W, C] array, got {pixels.dtype} "
                f"{list(pixels.shape)}"
            )
        tensor = pb.ModelInferRequest.InferInputTensor(
            name=INPUT_NAME, datatype="UINT8", shape=list(pixels.shape)
        )
        data = np.ascontiguousarray(pixels).tobytes()
        return self._classifications(model, version, (tensor, data), top_k)

    def classify_tensor(
        self, model: str, array: np.ndarray, top_k: int = 5, version: str = ""
    ) -> list[list[Classification]]:
        """An already preprocessed NCHW batch; top-k per row, labelled by the server."""
        return self._classifications(model, version, self._fp32_input(array), top_k)

    def _classifications(
        self,
        model: str,
        version: str,
        request_input: _Input,
        top_k: int,
    ) -> list[list[Classification]]:
        if top_k < 1:
            raise ClientError(f"top_k must be >= 1, got {top_k}")
        out, raw = self._infer(model, version, request_input, top_k)
        if out.datatype != "BYTES" or len(out.shape) != 2:
            raise ClientError(
                f"expected a BYTES [N, k] classification output, got {out.datatype} "
                f"{list(out.shape)}"
            )
        rows, k = int(out.shape[0]), int(out.shape[1])
        elements = (
            split_bytes_elements(raw, rows * k)
            if raw is not None
            else list(out.contents.bytes_contents)
        )
        if len(elements) != rows * k:
            raise ClientError(f"expected {rows * k} classification entries, got {len(elements)}")
        entries = [Classification.parse(e) for e in elements]
        return [entries[r * k : (r + 1) * k] for r in range(rows)]
