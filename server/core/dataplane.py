"""What each RPC does, independent of gRPC plumbing (MLServer's data plane).

ModelInfer: validate the single input against the model's config (shape with
the batch dimension spelled out, datatype, byte size), decode encoded images
server-side when the input is BYTES, queue the rows in the model's dynamic
batcher, and answer the rows that come back as logits or as Triton's
classification strings. It takes and returns ``server/core/messages.py``'s types;
each frontend translates its wire form at its edge.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import numpy as np

from imaging.pixelrows import PixelRows
from modelrepo.keys import RUNTIME_PREFIX
from protos import grpc_service_pb2 as pb
from server.batching import batcher as batching
from server.core import ensemble, explain, limits, outputs, request_caps, statistics, tensors
from server.core.cuda_shared_memory import CudaSharedMemory
from server.core.errors import (
    DeadlineExceeded,
    InferenceError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    shown,
)
from server.core.images import ImagePipeline, accepted_inputs, input_forms
from server.core.logsettings import LogControl
from server.core.messages import InferRequest, InferResponse, InputTensor
from server.core.models import ModelManager, ServedVersion, check_name
from server.core.shared_memory import (
    SharedMemoryManager,
    shm_ref,
)
from server.core.trace import Changes, Trace, Tracer
from server.settings.limits import RequestLimits

SERVER_NAME = "cnn-serving"
SERVER_VERSION = "0.1.0"
# What this server does as Triton does it (a client may branch on the list): only true ones.
EXTENSIONS = (
    "classification",
    "model_repository",
    "statistics",
    "model_configuration",
    "binary_tensor_data",
    "trace",  # server/core/trace.py
    "logging",  # server/core/logsettings.py
)
_REQUEST_LIMITS = RequestLimits()
_DATATYPE = {"TYPE_FP32": "FP32", "TYPE_STRING": "BYTES"}


def _batch_dims(served: ServedVersion) -> list[int]:
    return [-1, *served.spec.input_dims]


def _late(submitted: float, deadline: float) -> bool:
    """Whether a cancellation is the deadline's: the client's deadline fires before the
    server's by the headers' transit time (long on a busy host), so a cancel in the last
    tenth of the request's time (at least 5 ms) counts as expired, not withdrawn."""
    return time.monotonic() >= deadline - max(0.005, 0.1 * (deadline - submitted))


class DataPlane:
    def __init__(
        self,
        manager: ModelManager,
        max_input_bytes: int,
        shm: SharedMemoryManager | None = None,
        images: ImagePipeline | None = None,
        max_spatial_size: int | None = None,
        request_limits: RequestLimits = _REQUEST_LIMITS,
        tracer: Tracer | None = None,
        logs: LogControl | None = None,
    ) -> None:
        self.manager = manager
        self.request_limits = request_limits  # counts and explanation budgets per request
        self.max_input_bytes = max_input_bytes
        self.max_spatial_size = max_spatial_size  # None: each model's own (server/core/limits.py)
        self.shm = shm or SharedMemoryManager(enabled=False)
        self.cuda_shm = CudaSharedMemory()  # status and unregister answer; register refuses
        self.images = images or ImagePipeline()
        self.tracer = tracer or Tracer()  # Triton's trace extension (server/core/trace.py)
        self.logs = logs or LogControl()  # Triton's logging extension
        self.shutting_down = False

    # --- health -----------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Readiness turns false and new inference is refused; accepted requests finish."""
        self.shutting_down = True

    def check_accepting(self) -> None:
        if self.shutting_down:
            raise Unavailable("server is shutting down")

    def server_ready(self) -> bool:
        return self.manager.ready() and not self.shutting_down

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self.manager.get(name, version)
        except InferenceError:
            return False
        return not self.shutting_down

    # --- metadata ---------------------------------------------------------
    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME,
            version=SERVER_VERSION,
            extensions=[*EXTENSIONS, *(["system_shared_memory"] if self.shm.enabled else [])],
        )

    def model_metadata(self, name: str, version: str) -> pb.ModelMetadataResponse:
        served = self.manager.get(check_name(name), version)
        cfg = served.spec.config
        entry = self.manager.entries[name]
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=name,
            versions=[str(v) for v in sorted(entry.versions)],
            platform=cfg.platform,
            inputs=[
                tensor(name=i.name, datatype="FP32", shape=_batch_dims(served)) for i in cfg.input
            ],
            outputs=[tensor(name=o.name, datatype="FP32", shape=[-1, *o.dims]) for o in cfg.output],
        )

    def model_config(self, name: str, version: str) -> pb.ModelConfigResponse:
        served = self.manager.get(check_name(name), version)
        config = pb.ModelConfigResponse()
        config.config.CopyFrom(served.spec.config)
        backend = served.backends[0].describe() if served.backends else {}
        for key, value in backend.items():
            config.config.parameters[RUNTIME_PREFIX + key].string_value = str(value)
        forms = input_forms(served.spec.preprocess, served.spec.input_dims)
        config.config.parameters["input.datatypes"].string_value = ",".join(forms)
        for datatype, layout in forms.items():  # what a tritonclient user may send
            config.config.parameters[f"input.{datatype}"].string_value = layout
        return config

    def raw_input_layout(self, name: str, version: str) -> tuple[str, str, list[int]]:
        """The single input's name, datatype and dims without the batch dimension: what a
        request without a JSON header (Triton's raw binary request) is taken to be."""
        served = self.manager.get(check_name(name), version)
        return served.spec.config.input[0].name, "FP32", list(served.spec.input_dims)

    # --- inference --------------------------------------------------------
    async def _input_array(
        self, served: ServedVersion, request: InferRequest, deadline: float | None
    ) -> np.ndarray | PixelRows:
        expected_name = served.input_name
        if len(request.inputs) != 1:
            raise InvalidArgument(
                f"model '{served.spec.name}' takes exactly one input '{expected_name}', "
                f"got {len(request.inputs)}"
            )
        tensor = request.inputs[0]
        if tensor.name != expected_name:
            raise InvalidArgument(
                f"unknown input '{tensor.name}' for model '{served.spec.name}'; "
                f"expected '{expected_name}'"
            )
        if request.wire_error:  # raw contents that do not pair with the inputs, and the like
            raise InvalidArgument(request.wire_error)
        raw = tensor.data if isinstance(tensor.data, bytes) else None
        ref = shm_ref(tensor.parameters, f"input '{tensor.name}'") if tensor.parameters else None
        if ref is not None:
            if tensor.data is not None:
                raise InvalidArgument(
                    f"input '{tensor.name}' names shared memory region {shown(ref.region)} "
                    "and also carries data: send one or the other"
                )
            raw = self.shm.read(ref, f"input '{tensor.name}'")
        if tensor.datatype in ("BYTES", "UINT8"):
            return await self._images(served, tensor, raw, deadline)
        if tensor.datatype != "FP32":
            raise InvalidArgument(
                f"input '{tensor.name}': datatype {tensor.datatype or '(empty)'} is not accepted; "
                f"send {accepted_inputs(served.spec.preprocess, served.spec.input_dims)}"
            )
        array = tensors.decode_numeric(tensor, raw, self.max_input_bytes)
        shape = array.shape
        if served.fixed_input and shape[1:] == served.input_dims:  # the common case, at once
            self._check_batch(served, shape[0])
        else:
            self._check_shape(served, list(shape))
        return array

    def _check_shape(self, served: ServedVersion, shape: list[int]) -> None:
        dims = served.input_dims
        ok = len(shape) == len(dims) + 1 and all(
            d == e or (e < 0 and d > 0) for d, e in zip(shape[1:], dims, strict=True)
        )
        if not ok:
            raise InvalidArgument(
                f"input shape {shape} does not match "
                f"[{', '.join(map(str, _batch_dims(served)))}] "
                f"(batch dimension first, up to max_batch_size {served.spec.max_batch_size})"
            )
        if not served.fixed_input:
            limits.check_spatial(served.spec, shape, self.max_spatial_size)
        self._check_batch(served, shape[0])

    @staticmethod
    def _check_batch(served: ServedVersion, n: int) -> None:
        limit = served.batcher.config.max_batch_size
        if n < 1:
            raise InvalidArgument(f"batch dimension is {n}: send at least one image")
        if n > limit:
            raise InvalidArgument(f"batch of {n} exceeds max_batch_size {limit}")

    async def _images(
        self,
        served: ServedVersion,
        tensor: InputTensor,
        raw: bytes | None,
        deadline: float | None,
    ) -> np.ndarray | PixelRows:
        shape = list(tensor.shape)
        if tensor.datatype == "UINT8":
            try:
                pixels = tensors.decode_numeric(tensor, raw, self.max_input_bytes)
            except InvalidArgument as exc:  # say which form was meant: pixels, not a tensor
                raise InvalidArgument(f"datatype UINT8 (pixels [N, H, W, C]): {exc}") from exc
            self._check_batch(served, shape[0] if shape else 0)
            run = self.images.pixels(served, tensor.name, pixels, deadline)
        else:
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise InvalidArgument(
                    f"BYTES input '{tensor.name}' must have shape [N] or [N, 1] (one encoded "
                    f"image per element), got {shape}"
                )
            self._check_batch(served, shape[0])
            elements = tensors.decode_bytes(tensor, raw)
            run = self.images.encoded(served, tensor.name, elements, deadline)
        started = time.perf_counter_ns()
        try:
            array = await run
        except DeadlineExceeded:
            served.metrics.dropped("deadline").inc()
            raise
        elapsed = time.perf_counter_ns() - started
        served.preprocess_ns[0] += 1
        served.preprocess_ns[1] += elapsed
        served.metrics.preprocess_seconds.observe(elapsed / 1e9)
        return array

    async def _run(
        self,
        served: ServedVersion,
        array: np.ndarray | PixelRows,
        deadline: float | None,
        owner: object,
        features: bool = False,
        trace: Trace | None = None,
    ):
        """The logits of ``array`` (with ``features``: and the feature map, a tuple)."""
        future = None
        submitted = time.monotonic()
        try:
            crowd = served.metrics.live.in_flight > 1  # others in flight: wake once per pass
            future = served.batcher.submit(array, deadline, owner, features, trace, crowd)
            return await future  # cancel() below: True when it was still queued
        except batching.QueueFullError as exc:
            raise ResourceExhausted(str(exc)) from exc
        except batching.DeadlineExceededError as exc:
            served.metrics.dropped("deadline").inc()
            raise DeadlineExceeded(str(exc)) from exc
        except batching.BatcherClosedError as exc:
            raise Unavailable(str(exc)) from exc
        except batching.RequestTooLargeError as exc:
            raise InvalidArgument(str(exc)) from exc
        except asyncio.CancelledError:  # gRPC cancels the handler when the deadline passes too
            if future is not None and future.cancel():  # True: it was still queued
                late = deadline is not None and _late(submitted, deadline)
                served.metrics.dropped("deadline" if late else "cancelled").inc()
            raise  # a request already computing is not dropped: its batch runs to the end
        except InferenceError:
            raise
        except Exception as exc:  # the backend failed this batch
            raise InferenceError(f"inference failed: {exc}") from exc

    def _check_explanation(
        self,
        served: ServedVersion,
        wanted: explain.ExplainRequest,
        array: np.ndarray | PixelRows,
        deadline: float | None,
    ) -> float | None:
        """Refuse an explanation the model cannot give before any work; its deadline."""
        combined = ensemble.is_ensemble(served.spec)
        classes = int(np.prod(served.spec.config.output[0].dims))
        has_cam = served.cam is not None
        explain.check_method(wanted, served.spec.name, has_cam, combined, classes)
        explain.check_size(array.shape, self.max_input_bytes)
        return explain.deadline(self.request_limits, deadline)

    async def infer(
        self,
        request: InferRequest,
        deadline: float | None,
        owner: object = None,
        protocol: str = "grpc",
        trace: Trace | None = None,
    ) -> InferResponse:
        """``owner``: the client (connection or stream), for its share of the queue;
        ``trace``: a sampled request (``Tracer.sample``) whose timestamps to take."""
        request_caps.check_message(self.request_limits, request)  # before any per-item work
        name = request.model_name  # a known name was checked when it was loaded
        name = name if name in self.manager.entries else check_name(name)
        served = self.manager.get(name, request.model_version)
        if trace is not None:
            trace.begin(served.spec.name, served.version, request.id)
        metrics, live = served.metrics, served.metrics.live
        started = time.perf_counter_ns()
        live.in_flight += 1  # read at scrape time (server/core/metrics.py's LiveSeries)
        try:
            array = await self._input_array(served, request, deadline)
            wanted = explain.parse(request)  # takes 'explanation' off the requested outputs
            if wanted is not None:
                deadline = self._check_explanation(served, wanted, array, deadline)
            wanted_outputs = outputs.check_outputs(served, request, len(array), self.shm)
            cam = wanted is not None and wanted.method == "cam"
            result = await self._run(served, array, deadline, owner, cam, trace)
            logits = result[0] if cam else result
            encode_started = time.perf_counter_ns()
            response = InferResponse(
                served.spec.name,
                str(served.version),
                request.id,
                outputs.write_outputs(served, wanted_outputs, logits, self.shm),
            )
            served.output_ns[0] += 1
            served.output_ns[1] += time.perf_counter_ns() - encode_started
            if wanted is not None:
                await self._explain(served, wanted, array, result, deadline, owner, response)
        except BaseException as exc:
            served.failure_ns[0] += 1
            served.failure_ns[1] += time.perf_counter_ns() - started
            code = exc.code.name if isinstance(exc, InferenceError) else "CANCELLED"
            metrics.requests(code, protocol).inc()
            raise
        finally:
            live.in_flight -= 1
            if trace is not None:
                trace.stamp("REQUEST_END")
        elapsed = time.perf_counter_ns() - started
        served.success_ns[0] += 1
        served.success_ns[1] += elapsed
        served.last_inference_ms = int(time.time() * 1000)
        metrics.requests("OK", protocol).inc()
        metrics.request_seconds.observe(elapsed / 1e9)
        return response

    async def _explain(
        self,
        served: ServedVersion,
        wanted: explain.ExplainRequest,
        array: np.ndarray | PixelRows,
        result: Any,
        deadline: float | None,
        owner: object,
        response: InferResponse,
    ) -> None:
        """The explanation ``wanted`` of the batch ``array`` (``result``: its logits, with
        the feature maps for a CAM), attached to ``response``: more runs, or the CAM."""
        logits, maps = result if wanted.method == "cam" else (result, None)
        run = functools.partial(self._run, served, deadline=deadline, owner=owner)
        found = (served.cam, maps) if wanted.method == "cam" and served.cam is not None else None
        rows = served.batcher.config.max_batch_size
        chunk = explain.chunk(self.request_limits, array.shape, rows, self.max_input_bytes)
        # decoded images normalised on their own (not batched), off the loop
        images = array if isinstance(array, np.ndarray) else await asyncio.to_thread(array.array)
        explain.attach(response, await explain.explain(wanted, run, images, logits, chunk, found))

    # --- trace settings -----------------------------------------------------
    def trace_settings(self, model: str, changes: Changes) -> dict[str, list[str]]:
        """Triton's TraceSetting: change (if ``changes``) and describe ``model``'s setting."""
        if model:
            try:
                self.manager.get(model)
            except InferenceError:
                raise InvalidArgument(f"Request for unknown model : {model}") from None
        return self.tracer.update(model, changes) if changes else self.tracer.describe(model)

    # --- statistics and repository ---------------------------------------
    def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        return statistics.statistics(self.manager, name, version)

    def repository_index(self, ready_only: bool) -> pb.RepositoryIndexResponse:
        return statistics.repository_index(self.manager, ready_only)
