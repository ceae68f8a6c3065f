"""The gRPC servicer: each RPC a few lines handing off to the data plane.

Errors become gRPC status codes here and only here: an ``InferenceError``
carries its code; anything else is a bug, logged with its traceback and
answered INTERNAL with the message.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.core import converters
from server.core.control import Caller, ModelControl
from server.core.dataplane import DataPlane
from server.core.errors import InferenceError, clip
from server.core.load_request import from_grpc
from server.core.messages import InferResponse
from server.core.models import ModelManager
from server.grpc.streaming import InferStream

log = logging.getLogger(__name__)


def _rpc(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapper(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except InferenceError as exc:
            code, message = exc.code, clip(str(exc))
        except (grpc.aio.AbortError, NotImplementedError):
            raise
        except Exception as exc:
            log.exception("%s failed", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, clip(f"{type(exc).__name__}: {exc}")
        # Aborting outside the except, without the request: grpc keeps the aborted call's
        # frames in a reference cycle until the GC runs, and they would hold its megabytes.
        del request
        await context.abort(code, message)

    return wrapper


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _caller(context: grpc.aio.ServicerContext) -> Caller:
    """The call's credentials: its authorization metadata, and a verified client certificate."""
    metadata = dict(context.invocation_metadata() or ())
    certified = bool(context.auth_context().get("x509_pem_cert"))
    return Caller(authorization=metadata.get("authorization"), client_cert=certified)


def _parent(context: grpc.aio.ServicerContext) -> str | None:
    """The client's W3C ``traceparent`` metadata, if any (read only while tracing is on)."""
    return next((v for k, v in context.invocation_metadata() or () if k == "traceparent"), None)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, plane: DataPlane, manager: ModelManager, control: ModelControl | None = None
    ) -> None:
        self.plane = plane
        self.manager = manager
        self.control = control or ModelControl()  # default: model control off, as Triton's
        self.streams: set[InferStream] = set()

    @_rpc
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.plane.server_ready())

    @_rpc
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    @_rpc
    async def ServerMetadata(self, request, context):
        return self.plane.server_metadata()

    @_rpc
    async def ModelMetadata(self, request, context):
        return self.plane.model_metadata(request.name, request.version)

    @_rpc
    async def ModelConfig(self, request, context):
        return self.plane.model_config(request.name, request.version)

    @_rpc
    async def ModelInfer(self, request, context):
        answer = await self._infer(request, _deadline(context), context.peer(), context)
        return converters.response_to_pb(answer)

    async def _infer(
        self, request: pb.ModelInferRequest, deadline: float | None, owner: object, context
    ) -> InferResponse:
        """The data plane's infer of the request translated, traced when the tracer samples
        it: Triton's gRPC timestamps around the data plane's (grpc.aio hands over a request
        already read)."""
        plane, tracer = self.plane, self.plane.tracer
        if not tracer.on or not (trace := tracer.sample(request.model_name, _parent(context))):
            message = converters.request_from_pb(request, plane.request_limits)
            return await plane.infer(message, deadline, owner=owner)
        trace.stamp("GRPC_WAITREAD_END")
        try:
            message = converters.request_from_pb(request, plane.request_limits)
            return await plane.infer(message, deadline, owner=owner, trace=trace)
        finally:
            trace.stamp("GRPC_SEND_START")
            tracer.finish(trace)

    @_rpc
    async def ModelStatistics(self, request, context):
        return self.plane.statistics(request.name, request.version)

    @_rpc
    async def RepositoryIndex(self, request, context):
        return self.plane.repository_index(request.ready)

    @_rpc
    async def RepositoryModelLoad(self, request, context):
        self.control.authorize("load", _caller(context))
        await self.manager.load(request.model_name, from_grpc(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request, context):
        self.control.authorize("unload", _caller(context))
        await self.manager.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # --- system shared memory (Triton's extension) ------------------------
    @_rpc
    async def SystemSharedMemoryRegister(self, request, context):
        self.plane.shm.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc
    async def SystemSharedMemoryUnregister(self, request, context):
        self.plane.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc
    async def SystemSharedMemoryStatus(self, request, context):
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.plane.shm.status(request.name):
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name,
                    key=region.key,
                    offset=region.offset,
                    byte_size=region.byte_size,
                )
            )
        return response

    # --- CUDA shared memory: answered as Triton without GPU (server/core/cuda_shared_memory.py)
    @_rpc
    async def CudaSharedMemoryRegister(self, request, context):
        cuda = self.plane.cuda_shm
        cuda.register(request.name, request.raw_handle, request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @_rpc
    async def CudaSharedMemoryUnregister(self, request, context):
        self.plane.cuda_shm.unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    @_rpc
    async def CudaSharedMemoryStatus(self, request, context):
        response = pb.CudaSharedMemoryStatusResponse()
        for region in self.plane.cuda_shm.status(request.name):
            status = response.regions[region.name]
            status.name, status.device_id = region.name, region.device_id
            status.byte_size = region.byte_size
        return response

    # --- trace and log settings (Triton's extensions) ---------------------------------
    @_rpc
    async def TraceSetting(self, request, context):
        changes = {key: list(value.value) for key, value in request.settings.items()}
        answer = self.plane.trace_settings(request.model_name, changes)
        response = pb.TraceSettingResponse()
        for key, values in answer.items():
            response.settings[key].value.extend(values)
        return response

    @_rpc
    async def LogSettings(self, request, context):
        changes = {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
                   for key, value in request.settings.items()}  # fmt: skip
        answer = self.plane.logs.update(changes)
        response = pb.LogSettingsResponse()
        for key, value in answer.items():
            field = {bool: "bool_param", int: "uint32_param", str: "string_param"}[type(value)]
            setattr(response.settings[key], field, value)
        return response

    async def ModelStreamInfer(self, request_iterator, context):
        """Triton's streaming inference (server/grpc/streaming.py): one answer per request."""
        if self.plane.shutting_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        # The stream, not its connection, is the client: its requests share one slice.
        infer = functools.partial(self._infer, owner=object(), context=context)
        stream = InferStream(infer, _deadline(context))
        self.streams.add(stream)
        try:
            async for answer in stream.responses(request_iterator):
                yield answer
        except InferenceError as exc:  # only the shutdown's UNAVAILABLE ends a stream
            await context.abort(exc.code, clip(str(exc)))
        finally:
            self.streams.discard(stream)

    def stop_streams(self) -> None:
        """Shutdown: open streams read no more requests and end once they are answered."""
        for stream in list(self.streams):
            stream.stop_reading()
