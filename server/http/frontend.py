"""KServe v2 HTTP/REST beside gRPC: same process, same event loop, same data plane.

aiohttp runs on the loop grpc.aio already uses, so an HTTP request and a gRPC
request for the same model meet in one batcher. Each handler is a few lines
handing off to the data plane; errors become JSON ``{"error": ...}`` with the
HTTP status that ``server/core/errors.py`` ties to each error, here and only here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from server.core.control import ModelControl
from server.core.dataplane import DataPlane
from server.core.errors import InferenceError, clip, shown
from server.core.models import ModelManager
from server.http import answers, budgets, codec, guard, page, shm_routes, trace_routes
from server.http.offload import JsonOffload
from server.settings import Settings, TlsSettings

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _MalformedRequestLog(logging.Filter):
    """aiohttp logs a request it cannot parse (a URL over 8 KiB, a broken header line) with
    a traceback before answering it 400 itself: bad input, so one INFO line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = "refused a malformed HTTP request: %s", (error.message,)
            record.exc_info, record.levelno, record.levelname = None, logging.INFO, "INFO"
        return True


_MALFORMED = _MalformedRequestLog()


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": clip(message)}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InferenceError as exc:
        return _json_error(exc.http_status, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        routed = exc.text and not exc.text.startswith(f"{exc.status}:")  # ours, not the router's
        message = exc.text if routed else f"{exc.reason}: {request.method} {shown(request.path)}"
        return _json_error(exc.status, message)
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return _json_error(500, f"{type(exc).__name__}: {exc}")


def _cors(origins: tuple[str, ...]) -> Any:
    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and ("*" in origins or origin in origins)
        if request.method == "OPTIONS" and allowed:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = (
                request.headers.get("Access-Control-Request-Headers") or "Content-Type"
            )
        else:
            response = await handler(request)
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = (
                f"{codec.HEADER_LENGTH}, Server-Timing"
            )
            response.headers["Vary"] = "Origin"
        return response

    return cors


def ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """The gRPC certificate options as an SSL context: a client CA turns on mutual TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca is not None:
            context.load_verify_locations(cafile=tls.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"cannot use TLS files {tls}: {exc}") from exc
    return context


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["name"], request.match_info.get("version", "")


class HttpFrontend:
    def __init__(
        self,
        plane: DataPlane,
        manager: ModelManager,
        settings: Settings,
        control: ModelControl | None = None,
    ) -> None:
        self.plane, self.manager, self.settings = plane, manager, settings
        self.control = control or ModelControl(settings.security)  # default: model control off
        listen = settings.listeners
        self.guard = guard.HttpGuard(settings.security, listen.host, listen.http_cors_origins)
        self.limits = limits = settings.http
        self.budgets = budgets.Budgets(limits, settings.protocol.max_message_bytes)
        self.json = JsonOffload(limits)
        self.port = -1
        self._runner: web.AppRunner | None = None

    # --- health and metadata ---------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.plane.server_ready()
        return web.json_response({"ready": ready}, status=200 if ready else 400)

    async def model_ready(self, request: web.Request) -> web.Response:
        ready = self.plane.model_ready(*_model(request))
        body = {"name": request.match_info["name"], "ready": ready}  # the OIP's answer
        return web.json_response(body, status=200 if ready else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(answers.message_json(self.plane.server_metadata()))

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(answers.message_json(self.plane.model_metadata(*_model(request))))

    async def model_config(self, request: web.Request) -> web.Response:
        config = self.plane.model_config(*_model(request)).config
        return web.json_response(answers.message_json(config))

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("name", ""), request.match_info.get("version", "")
        return web.json_response(answers.message_json(self.plane.statistics(name, version)))

    # --- repository ------------------------------------------------------------------
    async def repository_index(self, request: web.Request) -> web.Response:
        body = await self.budgets.read_body(request)
        ready = codec.index_ready(body)
        index = answers.message_json(self.plane.repository_index(ready))
        return web.json_response(index.get("models", []))

    async def load(self, request: web.Request) -> web.Response:
        self.control.authorize("load", guard.caller(request))
        body = await self.budgets.read_body(request)  # files may make it as large as a model
        if len(body) > self.limits.json_on_loop_bytes:  # files in base64: decoded on a thread
            load = await asyncio.to_thread(codec.load_request, body)
        else:
            load = codec.load_request(body)
        del body
        # finish if the client hangs up
        await asyncio.shield(self.manager.load(request.match_info["name"], load))
        return web.json_response({})

    async def unload(self, request: web.Request) -> web.Response:
        self.control.authorize("unload", guard.caller(request))
        await asyncio.shield(self.manager.unload(request.match_info["name"]))
        return web.json_response({})

    # --- inference -------------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.Response:
        self.plane.check_accepting()
        tracer = self.plane.tracer
        received = time.monotonic_ns() if tracer.on else 0  # Triton's HTTP_RECV_START
        started = time.perf_counter()
        if request.headers.get(codec.HEADER_LENGTH) == "0":  # Triton's raw binary request
            model, version = _model(request)
            body = await self.budgets.read_body(request)  # the body is the one input
            layout = self.plane.raw_input_layout(model, version)
            call = codec.parse_raw(body, model, version, *layout)
            del body
        else:
            call = await self.json.parse(request, self.budgets, self.plane.request_limits)
        read = time.monotonic_ns() if received else 0  # read and parsed
        peer = request.transport.get_extra_info("peername") if request.transport else None
        owner = ("http", peer)  # one connection: one client, for its share of the queue
        parent = request.headers.get("traceparent") if received else None
        trace = tracer.sample(call.message.model_name, parent) if received else None
        if trace is not None:
            trace.stamp("HTTP_RECV_START", received)
            trace.stamp("HTTP_RECV_END", read)
        try:
            answer = await self.plane.infer(call.message, call.deadline, owner, "http", trace)
            payload, header_length = await self.json.encode(answer, call)
        finally:
            if trace is not None:
                trace.stamp("HTTP_SEND_START")
                tracer.finish(trace)
        response = web.Response(
            body=payload,
            content_type="application/json"
            if header_length is None
            else "application/octet-stream",
        )
        if header_length is not None:
            response.headers[codec.HEADER_LENGTH] = str(header_length)
        elapsed_ms = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"server;dur={elapsed_ms:.3f}"
        if "Accept-Encoding" in request.headers:  # gzip or deflate, as the client accepts
            response.enable_compression()
        return response

    # --- the listener ----------------------------------------------------------------
    def application(self) -> web.Application:
        middlewares = [_errors, self.guard.middleware] + (
            [_cors(self.settings.listeners.http_cors_origins)]
            if self.settings.listeners.http_cors_origins
            else []
        )
        middlewares.append(self.budgets.middleware)  # 413/503 before a body byte is read
        app = web.Application(
            client_max_size=self.settings.protocol.max_message_bytes, middlewares=middlewares
        )
        self.guard.install(app)
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        get = web.get
        post = functools.partial(web.post, expect_handler=self.budgets.expect_handler)
        routes = [
            get("/v2/health/live", self.live),
            get("/v2/health/ready", self.ready),
            get("/v2", self.server_metadata),
            get("/v2/", self.server_metadata),
            get("/v2/models/stats", self.statistics),
            post("/v2/repository/index", self.repository_index),
            post("/v2/repository/models/{name}/load", self.load),
            post("/v2/repository/models/{name}/unload", self.unload),
        ]
        for prefix in (model, versioned):
            routes += [
                get(prefix, self.model_metadata),
                get(prefix + "/ready", self.model_ready),
                get(prefix + "/config", self.model_config),
                get(prefix + "/stats", self.statistics),
                post(prefix + "/infer", self.infer),
            ]
        app.add_routes(routes)
        page.add_routes(app, self.plane)
        shm_routes.add_routes(app, self.plane, self.limits.max_control_body_kb << 10)
        trace_routes.add_routes(app, self.plane)
        return app

    async def start(self) -> None:
        logging.getLogger("aiohttp.server").addFilter(_MALFORMED)  # the same filter: no-op twice
        budgets.throttle_loop_errors(asyncio.get_running_loop())
        runner = web.AppRunner(
            self.application(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self.settings.listeners.grace_seconds,
            **budgets.runner_args(self.limits),
        )
        await runner.setup()
        tls, host, port = (
            self.settings.tls,
            self.settings.listeners.host,
            self.settings.listeners.http_port,
        )
        context = ssl_context(tls) if tls.enabled else None
        gate = budgets.ConnectionGate(self.limits)
        site = budgets.GatedSite(runner, gate, host, port, ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"cannot bind HTTP to {host}:{port}: {exc}") from exc
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening and wait (up to the grace period) for the requests in flight."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.json.close()
