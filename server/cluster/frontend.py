"""Each node's gRPC listener, run inside that node's ingress replica: one hop to a model.

Behind Ray Serve's own gRPC proxy a call took two actor calls inside a node
(proxy → ingress replica → model replica), each a pickled message between
processes: measured, that put the cluster at 2-3× the single server's CPU per
request (docs/cluster.md). So Serve runs no proxy here (``proxy_location:
Disabled``) and the ingress replica that ``deploy`` places on every node serves
KServe v2 gRPC itself, with the single server's registration (lenient
decoding: a body that is not protobuf is INVALID_ARGUMENT), message size limit,
TLS and ``grpc.health.v1``: a call takes one actor call, to the model replica.

The listener runs on a thread of its own with asyncio's standard event loop
(Serve runs the replica's code on uvloop, which grpc.aio does not support);
the methods call model replicas through deployment handles, which work from
any thread's loop. A Serve replica already runs grpc.aio on another loop
(its internal server), and grpc.aio wakes every loop for each completion:
the loops that lose the race read nothing (EAGAIN), which asyncio would log
with a traceback each time (~250 KB of log per minute under load,
measured), so that one error is dropped on this loop.

The port is bound without ``SO_REUSEPORT`` (grpcio's default turns it on): a
second listener on the node's port, another ingress or another program, fails
loudly instead of silently taking half of the connections.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import grpc_service_pb2_grpc as pb_grpc
from server.core.grpc_edge import add_inference_service, server_credentials
from server.settings import Settings

log = logging.getLogger(__name__)

# The settings tree's values the listener reads (``ingress_settings`` sends them).
LISTENER_FIELDS: dict[str, Any] = {
    "listeners": {"host", "grpc_port"},
    "protocol": {"max_message_bytes"},
    "tls": True,
    "cluster": {"proxy": True},
}


T = TypeVar("T")


class ListenError(RuntimeError):
    """The node's gRPC port could not be bound."""


class Listener:
    """The node's gRPC server on its own thread and standard asyncio loop."""

    def __init__(self) -> None:
        self.loop = asyncio.SelectorEventLoop()  # not uvloop (see the module docstring)
        self.loop.set_exception_handler(_lost_wakeup_ignored)
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="kserve-grpc", daemon=True
        )
        self._thread.start()
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self.port = 0

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """``work`` run on the listener's loop, where the servicer's methods run."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    async def start(
        self, servicer: pb_grpc.GRPCInferenceServiceServicer, settings: Settings
    ) -> None:
        """Bound and serving once this returns; ``ListenError`` if the port is taken."""
        try:
            self._server, self._health, self.port = await self.run(_serve(servicer, settings))
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, finish the accepted ones (``grace_s`` at most), end the thread."""
        if self._server is not None and self._health is not None:
            await self.run(self._health.enter_graceful_shutdown())
            await self.run(self._server.stop(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join)
        self.loop.close()


def _lost_wakeup_ignored(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Drop grpc.aio's empty wake-up read (another loop took the byte); log the rest."""
    error = context.get("exception")
    if (
        isinstance(error, BlockingIOError)
        and error.errno == errno.EAGAIN
        and "PollerCompletionQueue" in str(context.get("message", ""))
    ):
        return
    loop.default_exception_handler(context)


async def _serve(
    servicer: pb_grpc.GRPCInferenceServiceServicer, settings: Settings
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """A started grpc.aio server on the node's gRPC port, in the running event loop, and
    the port it bound."""
    size = settings.protocol.max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            ("grpc.so_reuseport", 0),
        ]
    )
    add_inference_service(servicer, server)
    probe = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(probe, server)
    host, port, tls = settings.listeners.host, settings.listeners.grpc_port, settings.tls
    address = f"{host}:{port}"
    try:
        if tls.enabled:
            bound = server.add_secure_port(address, server_credentials(tls))
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio's "Failed to bind", without the reason
        bound = 0
    if bound == 0:
        raise ListenError(
            f"cannot listen for gRPC on {address}: the port is taken (another ingress, "
            f"Serve's own proxy or another program on this node?) or the address is not "
            f"this node's; choose another --grpc-port"
        )
    await server.start()
    await probe.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("ingress serving KServe v2 gRPC%s on %s", " with TLS" if tls.enabled else "", address)
    return server, probe, bound
