"""HTTP budgets: time, connections and body bytes a client may hold (nginx's model).

Without them 30 connections each sending a 60 MB body one byte short pinned 1.8 GB
forever, an ``Expect: 100-continue`` for 1 GB was answered 100 Continue, and idle
connections were kept for an hour until the process ran out of file descriptors.
aiohttp's own knobs do what they can (``keepalive_timeout``, which also bounds the
time to send a request's headers; ``handler_cancellation``, so a client that hangs up
withdraws its queued work); the rest is here:

- ``ConnectionGate`` caps connections in total and per peer IP (503, then closed);
- ``middleware`` answers 413 from ``Content-Length`` before a byte of body is read,
  and 503 when the server-wide budget of body bytes in flight is spent;
- ``expect_handler`` does the same before answering ``100 Continue``;
- ``read_body`` reads with a timeout between reads (408, connection closed);
- ``throttle_loop_errors`` logs a repeated event-loop error (EMFILE on accept) once
  per interval with a count, instead of a traceback per occurrence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import HttpVersion11, web

from server.core.errors import clip
from server.settings.limits import HttpLimits

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_FD_RESERVE = 256  # descriptors kept for gRPC, model files, the metrics port, logs
_LOG_INTERVAL = 10.0  # seconds between two log lines for the same loop error
_INFER = "/infer"
_LOAD = "/load"
_HEADER_LENGTH = "Inference-Header-Content-Length"
_RESERVED = "budget.reserved"
SPOOL_PREFIX = "cnn-serving-body-"


def runner_args(limits: HttpLimits) -> dict[str, Any]:
    """aiohttp's own knobs for ``web.AppRunner``."""
    return {"keepalive_timeout": limits.keepalive_timeout, "handler_cancellation": True}


def _refusal(status: int, message: str, close: bool = True) -> web.Response:
    response = web.json_response({"error": clip(message)}, status=status)
    if status == 503:
        response.headers["Retry-After"] = "1"
    if close:
        response.force_close()  # the body was not read: the connection cannot be reused
    return response


class BodyBudget:
    """Bytes of request bodies received or held by handlers, across the server."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class Budgets:
    """The per-request half: body sizes, the body budget, the body read timeout."""

    def __init__(self, limits: HttpLimits, max_body_bytes: int) -> None:
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.bodies = BodyBudget(limits.max_body_bytes_in_flight)

    def _cap(self, request: web.Request) -> tuple[int, str]:
        if request.path.endswith(_INFER):
            return self.max_body_bytes, "--max-message-mb"
        if request.path.endswith(_LOAD):  # Triton's file: parameters carry model files
            return self.max_body_bytes, "--max-message-mb (a model load with its files)"
        return self.limits.max_control_body_kb << 10, "http limit max_control_body_kb"

    def refusal(self, request: web.Request, take: bool = True) -> web.Response | None:
        """413/503 for a body that is too large or does not fit the budget; else None,
        and (``take``) the body's size taken from the budget."""
        cap, source = self._cap(request)
        length = request.content_length
        if length is not None and length > cap:
            return _refusal(413, f"request body of {length:,} bytes exceeds {cap:,} ({source})")
        header = request.headers.get(_HEADER_LENGTH, "")
        header_cap = self.limits.max_json_header_kb << 10
        if header.isdigit() and int(header) > header_cap:
            return _refusal(
                413,
                f"{_HEADER_LENGTH} {int(header):,} exceeds {header_cap:,} bytes of JSON "
                "(http limit max_json_header_kb): send tensors in the binary part",
            )
        if not length:
            return None
        if not take:
            fits = self.bodies.used + length <= self.bodies.limit
        elif fits := self.bodies.take(length):
            request[_RESERVED] = length
        if not fits:
            return _refusal(
                503,
                f"the server is receiving {self.bodies.used:,} bytes of request bodies, its "
                f"budget is {self.bodies.limit:,} (http limit max_body_mb_in_flight): retry",
            )
        return None

    def release(self, request: web.Request) -> None:
        self.bodies.give(request.get(_RESERVED, 0))
        request[_RESERVED] = 0

    async def expect_handler(self, request: web.Request) -> web.Response | None:
        """``Expect: 100-continue``: refuse (413/503) before the client sends the body.
        Nothing is taken from the budget here: the middleware does, in the same task."""
        refusal = self.refusal(request, take=False)
        if refusal is not None:
            return refusal
        expect = request.headers.get("Expect", "")
        if request.version != HttpVersion11 or expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect[:64]!r}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the answer's size
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """413/503 before the body is read; the body's budget given back when answered."""
        if request.body_exists:
            refusal = self.refusal(request)
            if refusal is not None:
                return refusal
        try:
            return await handler(request)
        finally:
            self.release(request)

    async def read_body(self, request: web.Request) -> bytes:
        """The whole body in memory (see ``chunks``)."""
        return b"".join([chunk async for chunk in self.chunks(request)])

    async def spool_body(self, request: web.Request, directory: Path) -> Path:
        """The whole body written to a new file in ``directory`` (tmpfs): each write lets
        go of the GIL, and the body never sits in the server's memory as one object."""
        fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, dir=directory)
        try:
            async for chunk in self.chunks(request):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        except BaseException:
            os.unlink(name)
            raise
        finally:
            os.close(fd)
        return Path(name)

    async def chunks(self, request: web.Request) -> AsyncIterator[bytes]:
        """The body as it arrives, each read within ``body_timeout``; chunked bodies
        counted as they arrive against the size cap and the budget."""
        cap, source = self._cap(request)
        timeout = self.limits.body_timeout
        size, reserved = 0, request.get(_RESERVED, 0)
        while True:
            try:
                async with asyncio.timeout(timeout):
                    chunk = await request.content.readany()
            except TimeoutError:
                message = (
                    f"no request body bytes for {timeout:g} s after {size:,} "
                    "(http limit body_timeout): connection closed"
                )
                _answer_and_close(request.transport, 408, "Request Timeout", message)
                raise web.HTTPRequestTimeout(text=message) from None
            if not chunk:
                return
            size += len(chunk)
            if size > cap:
                message = f"request body exceeds {cap:,} bytes ({source})"
                _answer_and_close(request.transport, 413, "Content Too Large", message)
                raise web.HTTPRequestEntityTooLarge(cap, size, text=message)
            if size > reserved:
                if not self.bodies.take(size - reserved):
                    message = f"request bodies in flight exceed {self.bodies.limit:,} bytes"
                    _answer_and_close(request.transport, 503, "Service Unavailable", message)
                    raise web.HTTPServiceUnavailable(text=message)
                reserved = request[_RESERVED] = size
            yield chunk


def _answer_and_close(
    transport: asyncio.BaseTransport | None, status: int, reason: str, message: str
) -> None:
    """A whole HTTP answer written straight to the socket, then the connection closed:
    for clients whose request cannot be finished (stalled, over a cap)."""
    if transport is None or transport.is_closing():
        return
    body = json.dumps({"error": clip(message)}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    assert isinstance(transport, asyncio.WriteTransport)
    transport.write(head.encode() + body)
    transport.close()  # after the buffered answer is written


# --- connections ---------------------------------------------------------------------------


def fit_open_files(wanted: int) -> int:
    """The connection cap, raising the soft open-file limit to fit it when allowed (as Go
    and nginx's worker_rlimit_nofile do); else the cap lowered to what fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + _FD_RESERVE
    infinite = resource.RLIM_INFINITY
    if soft != infinite and soft < need:
        target = need if hard == infinite else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != infinite and soft < need:
        fitted = max(1, soft - _FD_RESERVE)
        log.warning(
            "HTTP max_connections %d lowered to %d: the open-file limit is %d", wanted, fitted, soft
        )
        return fitted
    return wanted


class ConnectionGate:
    """Open HTTP connections, in total and per peer IP; over either cap: 503 and closed."""

    def __init__(self, limits: HttpLimits) -> None:
        self.max_total = fit_open_files(limits.max_connections)
        self.max_peer = limits.max_connections_per_peer
        self.total = 0
        self.peers: Counter[str] = Counter()
        self.refused = 0
        self._logged = 0.0

    def admit(self, peer: str) -> str | None:
        """None when admitted (counted); else why not."""
        if self.total >= self.max_total:
            why = f"the server has {self.total} HTTP connections open (http limit max_connections)"
        elif self.peers[peer] >= self.max_peer:
            why = (
                f"{peer} has {self.peers[peer]} HTTP connections open "
                "(http limit max_connections_per_peer)"
            )
        else:
            self.total += 1
            self.peers[peer] += 1
            return None
        self.refused += 1
        if time.monotonic() - self._logged > _LOG_INTERVAL:
            self._logged = time.monotonic()
            log.warning("refusing HTTP connections: %s (%d refused so far)", why, self.refused)
        return why

    def release(self, peer: str) -> None:
        self.total -= 1
        self.peers[peer] -= 1
        if not self.peers[peer]:
            del self.peers[peer]

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Gated(self, make())


class _Gated(asyncio.Protocol):
    """aiohttp's protocol behind the gate: it sees only admitted connections."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self.gate, self.inner, self.peer = gate, inner, ""
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else ""
        why = self.gate.admit(self.peer)
        if why is not None:
            _answer_and_close(transport, 503, "Service Unavailable", f"too many connections: {why}")
            return
        self.admitted = True
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.admitted = False
            self.gate.release(self.peer)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()


class GatedSite(web.TCPSite):
    """``web.TCPSite`` whose connections pass the gate first."""

    def __init__(self, runner: web.BaseRunner, gate: ConnectionGate, *args: Any, **kw: Any):
        super().__init__(runner, *args, **kw)
        self.gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.gate.factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


# --- event-loop errors ---------------------------------------------------------------------


def throttle_loop_errors(loop: asyncio.AbstractEventLoop, interval: float = _LOG_INTERVAL) -> None:
    """The loop's error handler, each repeated error logged once per ``interval`` with the
    count it stood for: out of file descriptors, asyncio reports every failed accept."""
    previous = loop.get_exception_handler()
    if getattr(previous, "throttled", False):
        return
    last: dict[str, float] = {}
    skipped: Counter[str] = Counter()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        key = f"{context.get('message', '')}|{type(error).__name__}"
        now = time.monotonic()
        if now - last.get(key, -interval) < interval:
            skipped[key] += 1
            return
        last[key] = now
        if skipped[key]:
            message = f"{context.get('message', '')} (and {skipped.pop(key)} more like it)"
            context = {**context, "message": message}
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.throttled = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)
