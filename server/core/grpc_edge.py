"""What every gRPC listener shares (the single server's and each cluster node's): the
KServe service registered so that requests which cannot even be parsed are answered
INVALID_ARGUMENT, and optional (mutual) TLS credentials.

grpcio answers a request body that is not valid protobuf with UNKNOWN and logs
a traceback; a client sending bytes is sending bad input, so the generated
handlers get a deserializer that keeps the parse error and a guard that
reports it with the message type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from protos import grpc_service_pb2_grpc as pb_grpc
from server.core.decoding import lenient, undecodable
from server.settings.listeners import TlsSettings


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read TLS {what} {path}: {exc.strerror or exc}") from exc


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """The PEM files as gRPC credentials; a client CA turns on mutual TLS."""
    assert tls.cert is not None and tls.key is not None  # TlsSettings checks they go together
    ca = _read(tls.client_ca, "client CA") if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(tls.key, "key"), _read(tls.cert, "certificate"))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _guarded(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        problem = undecodable(request)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        call = behaviour(request, context)
        del request  # grpc keeps an aborted call's frames in a cycle until the GC runs
        return await call

    return handler


class _Capture:
    """Stands in for the server while the generated code registers its handlers."""

    handlers: dict[str, grpc.RpcMethodHandler]
    service = ""

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, handlers


def add_inference_service(servicer: pb_grpc.GRPCInferenceServiceServicer, server: Any) -> None:
    """Like the generated ``add_GRPCInferenceServiceServicer_to_server``, with lenient decoding."""
    capture = _Capture()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)
    handlers = {}
    for name, handler in capture.handlers.items():
        if not (handler.request_streaming or handler.response_streaming):
            deserialize = handler.request_deserializer
            owner = getattr(deserialize, "__self__", None)
            type_name = owner.DESCRIPTOR.full_name if owner is not None else name
            handler = handler._replace(
                request_deserializer=lenient(deserialize, type_name),
                unary_unary=_guarded(handler.unary_unary),
            )
        handlers[name] = handler
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(capture.service, handlers),)
    )
    server.add_registered_method_handlers(capture.service, handlers)
