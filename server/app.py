"""The server process: gRPC (KServe v2 + health + reflection), HTTP/REST and /metrics.

Shutdown is graceful: on SIGTERM/SIGINT the server reports NOT_SERVING,
stops accepting RPCs, lets every accepted request finish (up to the grace
period), drains the batchers and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos import grpc_service_pb2 as pb
from server.core.control import ModelControl, ModelControlError
from server.core.grpc_edge import add_inference_service, server_credentials
from server.core.memory import MemoryTrimmer
from server.core.wiring import build_core
from server.grpc.servicer import InferenceServicer
from server.http.frontend import HttpFrontend
from server.settings import Settings
from server.startup import EXIT_CODE, StartupError, bind_error, check_tls

log = logging.getLogger(__name__)

MiB = 1 << 20


def _health_status(ready: bool) -> int:
    serving = health_pb2.HealthCheckResponse
    return serving.SERVING if ready else serving.NOT_SERVING


class InferenceServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        mutual_tls = settings.tls.client_ca is not None
        # ModelControlError: unusable control settings (the start stops)
        self.control = ModelControl(settings.security, mutual_tls)
        core = build_core(settings)
        self.metrics, self.manager, self.plane = core.metrics, core.manager, core.plane
        self.servicer = InferenceServicer(self.plane, self.manager, self.control)
        self.trimmer = MemoryTrimmer(settings.memory)
        self.health = health.aio.HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._metrics_http = None
        self.http: HttpFrontend | None = None
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> None:
        self.manager.listeners.append(self._set_health)
        await self.manager.load_all()
        self.trimmer.start()  # its floor: the RSS with every model loaded
        size = self.settings.protocol.max_message_bytes
        listen, tls = self.settings.listeners, self.settings.tls
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
            ]
        )
        add_inference_service(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{listen.host}:{listen.grpc_port}"
        try:
            if not tls.enabled:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, server_credentials(tls))
        except RuntimeError:  # grpc's "Failed to bind", without the reason
            self.port = 0
        if self.port == 0:
            raise bind_error("gRPC", listen.host, listen.grpc_port)
        await server.start()
        self._grpc = server
        await self.health.set("", _health_status(self.manager.ready()))
        if listen.http_port >= 0:
            self.http = HttpFrontend(self.plane, self.manager, self.settings, self.control)
            await self.http.start()
        if listen.metrics_port >= 0:
            host, port = listen.metrics_host, listen.metrics_port
            try:
                self._metrics_http = self.metrics.serve(port, host)
            except OSError as exc:
                raise bind_error("metrics", host, port, exc) from None
            self.metrics_port = self._metrics_http.server_port
        log.info(
            "serving gRPC%s on %s:%d, HTTP on %s, metrics on %s",
            " with TLS" if tls.enabled else "",
            listen.host,
            self.port,
            self.http_port if self.http else "off",
            self.metrics_port or "off",
        )

    @property
    def http_port(self) -> int:
        """The bound HTTP port; -1 when HTTP is off."""
        return self.http.port if self.http else -1

    def _set_health(self, name: str, ready: bool) -> None:
        asyncio.get_running_loop().create_task(self.health.set(name, _health_status(ready)))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, finish what was accepted, release everything."""
        self.plane.begin_shutdown()  # both frontends: not ready, no new inference
        self.manager.begin_shutdown()  # a load in progress is abandoned, never waited for
        self.servicer.stop_streams()
        await self.health.enter_graceful_shutdown()
        if self._grpc is not None:
            grace = self.settings.listeners.grace_seconds if grace is None else grace
            await self._grpc.stop(grace)
        if self.http is not None:
            await self.http.stop()
        await self.manager.close()
        await asyncio.to_thread(self.plane.tracer.close)  # writes the traces still held
        self.plane.shm.close()
        self.plane.images.close()
        self.trimmer.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()

    async def wait(self) -> None:
        if self._grpc is not None:
            await self._grpc.wait_for_termination()


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; the exit code."""
    try:
        server = InferenceServer(settings)
    except ModelControlError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CODE
    try:
        if settings.tls.enabled:
            check_tls(settings.tls)
        await server.start()
    except StartupError as exc:
        await server.stop(grace=0)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CODE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"ready: gRPC {settings.listeners.host}:{server.port}, metrics port {server.metrics_port}, "
        f"HTTP port {server.http_port}",
        flush=True,
    )
    await stop.wait()
    log.info("signal received: draining (grace %.0fs)", settings.listeners.grace_seconds)
    await server.stop()
    return 0
