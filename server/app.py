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
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos import grpc_service_pb2 as pb
from server.core.dataplane import DataPlane
from server.core.images import ImageOptions, ImagePipeline
from server.core.logsettings import LogControl
from server.core.memory import MemoryTrimmer, TrimOptions
from server.core.metrics import Metrics
from server.core.models import ModelManager, ServerOptions
from server.core.shared_memory import SharedMemoryManager
from server.core.trace import Tracer
from server.grpc.servicer import InferenceServicer
from server.grpc.transport import TlsFiles, add_inference_service
from server.http.frontend import HttpFrontend, HttpOptions
from server.settings.tracing import TraceSettings
from server.startup import EXIT_CODE, StartupError, bind_error, check_repository, check_tls

log = logging.getLogger(__name__)

MiB = 1 << 20


def _health_status(ready: bool) -> int:
    serving = health_pb2.HealthCheckResponse
    return serving.SERVING if ready else serving.NOT_SERVING


@dataclass(frozen=True)
class AppOptions:
    models: ServerOptions
    host: str = "0.0.0.0"
    grpc_port: int = 8001  # Triton's ports: HTTP 8000, gRPC 8001, metrics 8002
    http_port: int = 8000  # -1 disables HTTP/REST, 0 picks a free port
    http_cors_origins: tuple[str, ...] = ()  # browsers on these origins may call the REST API
    metrics_port: int = 8002  # -1 disables the metrics endpoint, 0 picks a free port
    metrics_host: str = "0.0.0.0"
    # Largest gRPC message accepted or sent; bigger ones are refused with
    # RESOURCE_EXHAUSTED by gRPC itself. 64 MiB holds a batch of 64 images at 512x512 FP32.
    max_message_bytes: int = 64 * MiB
    grace_seconds: float = 30.0
    tls: TlsFiles | None = None  # None: plaintext gRPC
    shared_memory: bool = True  # Triton's system shared-memory extension
    images: ImageOptions = ImageOptions()  # decode pool and image limits
    max_spatial_size: int | None = None  # dynamic H/W cap for every model (server/core/limits.py)
    memory: TrimOptions = TrimOptions()  # giving memory back (server/core/memory.py)
    tracing: TraceSettings = TraceSettings()  # Triton's trace extension (server/core/trace.py)
    extra: dict[str, str] = field(default_factory=dict)


class InferenceServer:
    def __init__(self, opts: AppOptions) -> None:
        self.opts = opts
        self.metrics = Metrics.create()
        self.manager = ModelManager(opts.models, self.metrics)
        self.plane = DataPlane(
            self.manager,
            max_input_bytes=opts.max_message_bytes,
            shm=SharedMemoryManager(enabled=opts.shared_memory, max_bytes=opts.max_message_bytes),
            images=ImagePipeline(opts.images),
            max_spatial_size=opts.max_spatial_size,
            tracer=Tracer(opts.tracing),
            logs=LogControl(),
        )
        self.servicer = InferenceServicer(self.plane, self.manager)
        self.trimmer = MemoryTrimmer(opts.memory)
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
        size = self.opts.max_message_bytes
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
        address = f"{self.opts.host}:{self.opts.grpc_port}"
        try:
            if self.opts.tls is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, self.opts.tls.credentials())
        except RuntimeError:  # grpc's "Failed to bind", without the reason
            self.port = 0
        if self.port == 0:
            raise bind_error("gRPC", self.opts.host, self.opts.grpc_port)
        await server.start()
        self._grpc = server
        await self.health.set("", _health_status(self.manager.ready()))
        if self.opts.http_port >= 0:
            self.http = HttpFrontend(self.plane, self.manager, self._http_options())
            await self.http.start()
        if self.opts.metrics_port >= 0:
            try:
                self._metrics_http = self.metrics.serve(
                    self.opts.metrics_port, self.opts.metrics_host
                )
            except OSError as exc:
                host, port = self.opts.metrics_host, self.opts.metrics_port
                raise bind_error("metrics", host, port, exc) from None
            self.metrics_port = self._metrics_http.server_port
        log.info(
            "serving gRPC%s on %s:%d, HTTP on %s, metrics on %s",
            "" if self.opts.tls is None else " with TLS",
            self.opts.host,
            self.port,
            self.http_port if self.http else "off",
            self.metrics_port or "off",
        )

    def _http_options(self) -> HttpOptions:
        opts = self.opts
        return HttpOptions(
            host=opts.host,
            port=opts.http_port,
            max_body_bytes=opts.max_message_bytes,
            tls=opts.tls,
            cors_origins=opts.http_cors_origins,
            grace_seconds=opts.grace_seconds,
        )

    @property
    def http_port(self) -> int:
        """The bound HTTP port; -1 when HTTP is off."""
        return self.http.port if self.http else -1

    def _set_health(self, name: str, ready: bool) -> None:
        asyncio.get_running_loop().create_task(self.health.set(name, _health_status(ready)))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, finish what was accepted, release everything."""
        self.servicer.stop_streams()
        if self.http is not None:
            self.http.begin_shutdown()
        await self.health.enter_graceful_shutdown()
        if self._grpc is not None:
            await self._grpc.stop(self.opts.grace_seconds if grace is None else grace)
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


async def serve(opts: AppOptions) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; the exit code."""
    server = InferenceServer(opts)
    try:
        if opts.tls is not None:
            check_tls(opts.tls)
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
        f"ready: gRPC {opts.host}:{server.port}, metrics port {server.metrics_port}, "
        f"HTTP port {server.http_port}",
        flush=True,
    )
    await stop.wait()
    log.info("signal received: draining (grace %.0fs)", opts.grace_seconds)
    await server.stop()
    return 0


def repository_path(text: str) -> Path:
    path = Path(text)
    try:
        check_repository(path)
    except StartupError as exc:
        raise SystemExit(f"error: {exc}") from None
    return path
