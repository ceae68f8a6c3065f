"""The ingress deployment: each node's KServe v2 gRPC listener, routing to model deployments.

One replica per node listens on the node's gRPC port (``frontend.py``); its
methods are the servicer's. Model RPCs go to the deployment of the model they
name (one actor call); server RPCs ask every model and merge. Which models there
are is read from Serve's controller (``routes.py``), not from the ingress's
arguments, so a deploy that adds or removes a model leaves the ingress running. A
replica answers with a response or the core's ``InferenceError``, which becomes the
call's status here through ``server/core/errors.py`` (the one table every frontend
uses); a replica lost with its node (``kill -9``, a network split) becomes
UNAVAILABLE, which clients retry, never INTERNAL; a model whose application was
deleted answers as unknown (NOT_FOUND).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import ray
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import DeploymentUnavailableError, RayServeException
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from protos import grpc_service_pb2 as pb
from server.cluster.frontend import Listener
from server.cluster.routes import MISS_S, Routes
from server.cluster.settings import replica_tree
from server.core.errors import (
    DeadlineExceeded,
    InferenceError,
    NotFound,
    Unavailable,
    Unimplemented,
    clip,
)
from server.core.models import check_name, unknown_model

log = logging.getLogger(__name__)

_RESPONSE = {
    name: getattr(pb, f"{name}Response")
    for name in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    if hasattr(pb, f"{name}Response")
}
_RESPONSE["ModelInfer"] = pb.ModelInferResponse
# A ModelInfer response parameter naming the node whose ingress routed the request.
INGRESS_PARAMETER = "ray_ingress"


Context = grpc.aio.ServicerContext
STOP_GRACE_S = 10.0  # a stopping ingress finishes the calls it accepted, this long at most


class KServeIngress:
    async def __init__(
        self,
        models: dict[str, DeploymentHandle] | None = None,
        listener: dict[str, Any] | None = None,
    ) -> None:
        """``models``: each model's deployment handle (one application holding them all),
        or None: the model applications Serve runs (one per model, ``routes.py``);
        ``listener``: the settings tree's listener values (``ingress_settings``)."""
        self.routes = Routes(models)
        self.node = ray.util.get_node_ip_address()
        settings = replica_tree(listener or {})
        self.timeout_s = settings.cluster.proxy.request_timeout_s
        self.fanout_timeout_s = settings.cluster.proxy.fanout_timeout_s
        self._listener = Listener()
        await self._listener.run(self.routes.start())  # where the methods run
        await self._listener.start(self, settings)

    @property
    def models(self) -> dict[str, DeploymentHandle]:
        return self.routes.handles

    async def _ask(self, model: str, method: str, request: Any) -> Any:
        """The replica's response; its ``InferenceError`` raised."""
        handle = await self.routes.find(check_name(model))
        if handle is None:
            raise NotFound(unknown_model(model, "is not found"))
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await self._unless_removed(model, handle.call.remote(method, request))
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"model '{model}': no answer within --proxy-request-timeout-s {self.timeout_s:g} s"
            ) from exc
        except RayTaskError:  # the replica's own code failed: a bug, INTERNAL
            raise
        except DeploymentUnavailableError as exc:  # deleted since the last read, or failed
            await self.routes.refresh(MISS_S)
            if model not in self.models:
                raise NotFound(unknown_model(model, "is not found")) from exc
            raise Unavailable(f"model '{model}': no replica can take requests; retry") from exc
        except (RayError, RayServeException) as exc:  # the replica or its node is gone
            raise Unavailable(
                f"model '{model}': the replica was lost ({type(exc).__name__}); retry"
            ) from exc
        if isinstance(answer, InferenceError):
            raise answer
        return answer

    async def _unless_removed(self, model: str, response: DeploymentResponse) -> Any:
        """The replica's answer, or NOT_FOUND as soon as the model's application is
        deleted (the request may be waiting in Ray's router for a replica that will never
        come); cancelled here (the caller gone, a timeout), the request is cancelled too."""
        call, gone = asyncio.ensure_future(response), self.routes.departure(model)
        try:
            await asyncio.wait((call, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():
                response.cancel()
                call.cancel()
        if call.done() and not call.cancelled():
            return call.result()
        raise NotFound(unknown_model(model, "was removed while the request waited"))

    async def _forward(self, model: str, method: str, request: Any, context: Context) -> Any:
        return await _answer(method, context, lambda: self._ask(model, method, request))

    async def _ask_all(self, method: str, request: Any) -> dict[str, Any]:
        """Each model's response, or the ``InferenceError`` it answered with."""
        names = sorted(self.models)
        found = await asyncio.gather(
            *(self._ask_bounded(n, method, request) for n in names), return_exceptions=True
        )
        for answer in found:
            if isinstance(answer, BaseException) and not isinstance(answer, InferenceError):
                raise answer
        return dict(zip(names, found, strict=True))

    async def _ask_bounded(self, model: str, method: str, request: Any) -> Any:
        """``_ask`` within the fan-out timeout: a model with no replica to answer (still
        being placed) must not hold a server-wide call, which waits for every model."""
        try:
            async with asyncio.timeout(self.fanout_timeout_s):
                return await self._ask(model, method, request)
        except TimeoutError:
            raise Unavailable(
                f"model '{model}': no replica answered {method} within "
                f"--proxy-fanout-timeout-s {self.fanout_timeout_s:g} s"
            ) from None

    # --- server RPCs: every model asked ------------------------------------
    async def ServerLive(self, request, grpc_context: Context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, grpc_context: Context):
        async def ready() -> pb.ServerReadyResponse:
            answers = (await self._ask_all("ServerReady", request)).values()
            ok = any(not isinstance(a, InferenceError) and a.ready for a in answers)
            return pb.ServerReadyResponse(ready=ok)

        return await _answer("ServerReady", grpc_context, ready)

    async def ServerMetadata(self, request, grpc_context: Context):
        async def first() -> pb.ServerMetadataResponse:  # any model's replica knows it
            if not self.models:
                await self.routes.refresh(MISS_S)
            if not self.models:
                raise Unavailable("no model is deployed: run `python -m server.cluster deploy`")
            return await self._ask(min(self.models), "ServerMetadata", request)

        return await _answer("ServerMetadata", grpc_context, first)

    async def RepositoryIndex(self, request, grpc_context: Context):
        async def index() -> pb.RepositoryIndexResponse:
            merged = pb.RepositoryIndexResponse()
            for name, answer in (await self._ask_all("RepositoryIndex", request)).items():
                if not isinstance(answer, InferenceError):
                    merged.models.extend(m for m in answer.models if m.name == name)
                elif not request.ready:
                    merged.models.add(name=name, state="UNAVAILABLE", reason=clip(str(answer)))
            return merged

        return await _answer("RepositoryIndex", grpc_context, index)

    async def ModelStatistics(self, request, grpc_context: Context):
        if request.name:
            return await self._forward(request.name, "ModelStatistics", request, grpc_context)

        async def every() -> pb.ModelStatisticsResponse:  # one replica per model: its counts
            merged = pb.ModelStatisticsResponse()
            for answer in (await self._ask_all("ModelStatistics", request)).values():
                if not isinstance(answer, InferenceError):
                    merged.model_stats.extend(answer.model_stats)
            return merged

        return await _answer("ModelStatistics", grpc_context, every)

    # --- model RPCs: the named model's deployment ------------------------
    async def ModelReady(self, request, grpc_context: Context):
        if await self.routes.find(request.name) is None:
            return pb.ModelReadyResponse(ready=False)
        return await self._forward(request.name, "ModelReady", request, grpc_context)

    async def ModelMetadata(self, request, grpc_context: Context):
        return await self._forward(request.name, "ModelMetadata", request, grpc_context)

    async def ModelConfig(self, request, grpc_context: Context):
        return await self._forward(request.name, "ModelConfig", request, grpc_context)

    async def ModelInfer(self, request, grpc_context: Context):
        response = await self._forward(request.model_name, "ModelInfer", request, grpc_context)
        response.parameters[INGRESS_PARAMETER].string_param = self.node
        return response

    async def ModelStreamInfer(self, requests: Any, grpc_context: Context) -> None:
        """Bidirectional streaming is not routed through the cluster: UNIMPLEMENTED, said so."""
        await grpc_context.abort(
            Unimplemented.code,
            "ModelStreamInfer is not supported through the Ray Serve cluster: "
            "send ModelInfer requests (any node's port balances them)",
        )

    async def __del__(self) -> None:
        """Serve stops this replica: stop taking calls, finish those accepted."""
        if getattr(self, "_listener", None) is not None:
            self._listener.loop.call_soon_threadsafe(self.routes.stop)
            await self._listener.stop(STOP_GRACE_S)

    def deployments(self) -> list[str]:
        return sorted(self.models)


async def _answer(method: str, context: Context, ask: Callable[[], Awaitable[Any]]) -> Any:
    """The response, or an empty one with the error's status (errors.py) on the call."""
    try:
        return await ask()
    except InferenceError as exc:
        context.set_code(exc.code)
        context.set_details(clip(str(exc)))
        return _RESPONSE[method]()


def _unimplemented(name: str, why: str) -> Callable[..., Awaitable[Any]]:
    async def handler(self: KServeIngress, request: Any, grpc_context: Context) -> Any:
        async def refuse() -> Any:
            raise Unimplemented(f"{name} is not supported through the Ray Serve cluster: {why}")

        return await _answer(name, grpc_context, refuse)

    handler.__name__ = name
    return handler


_UNSUPPORTED = {
    "RepositoryModelLoad": "models are deployed with `python -m server.cluster deploy`",
    "RepositoryModelUnload": "models are deployed with `python -m server.cluster deploy`",
    "SystemSharedMemoryStatus": "a client's shared memory is not on the replica's host",
    "SystemSharedMemoryRegister": "a client's shared memory is not on the replica's host",
    "SystemSharedMemoryUnregister": "a client's shared memory is not on the replica's host",
    "CudaSharedMemoryStatus": "a client's shared memory is not on the replica's host",
    "CudaSharedMemoryRegister": "a client's shared memory is not on the replica's host",
    "CudaSharedMemoryUnregister": "a client's shared memory is not on the replica's host",
    "TraceSetting": "not supported by this server",
    "LogSettings": "not supported by this server",
}
for _name, _why in _UNSUPPORTED.items():
    setattr(KServeIngress, _name, _unimplemented(_name, _why))
