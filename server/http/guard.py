"""What a browser may make the HTTP port do: the checks in front of every handler.

A web page on another site can make its visitor's browser send a "simple" cross-site
POST (``text/plain``, form encodings: no preflight) to a server on the visitor's
machine or network, and a DNS name the attacker rebinds to 127.0.0.1 makes it even
same-origin. So, before any handler runs:

- ``Host`` must name this server: an IP address (it cannot be rebound), localhost, the
  bound host, this machine's name or a name the operator allows; else 403.
- ``Origin``, when a browser sends one, must be this server's own origin, a loopback
  one, an allowed name or an allowed CORS origin; else 403.
- A request with a body must be ``application/json`` or ``application/octet-stream``
  (Triton's binary tensor extension), or carry no Content-Type (tritonclient sends
  none; a browser sending none always sends ``Origin``); else 415.

Every answer carries the usual security headers (no sniffing, no framing, no referrer,
a same-origin CSP) and a ``Server`` header that names no library version.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from server.core.control import Caller
from server.core.errors import shown
from server.settings.security import SecuritySettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVER_NAME = "cnn-serving"
BODY_TYPES = ("application/json", "application/octet-stream")
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::(?P<port>\d{1,5}))?")
_ORIGIN = re.compile(r"(?P<scheme>https?)://(?P<authority>[^/?#@]+)")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")
_CACHED = 1024  # Host and Origin values whose verdict is remembered
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": _CSP,
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _authority(text: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (IPv6 in brackets) as (lower-case name, port); None if malformed."""
    found = _HOST.fullmatch(text.strip().lower())
    if found is None:
        return None
    port = int(found["port"]) if found["port"] else None
    return (found["v6"] or found["name"]).rstrip("."), port


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    return _is_ip(name) and ipaddress.ip_address(name).is_loopback


def caller(request: web.Request) -> Caller:
    """A model-control call's credentials: its Authorization header, its client certificate."""
    transport = request.transport
    certified = bool(transport is not None and transport.get_extra_info("peercert"))
    return Caller(authorization=request.headers.get(hdrs.AUTHORIZATION), client_cert=certified)


class HttpGuard:
    """Host, Origin and Content-Type checks (a middleware) and the security headers."""

    def __init__(
        self,
        settings: SecuritySettings = SecuritySettings(),
        bound_host: str = "",
        cors_origins: tuple[str, ...] = (),
    ) -> None:
        names = set(settings.allowed_hosts)
        self._any_host = "*" in names
        if bound_host not in _WILDCARD_HOSTS:
            names.add(bound_host.lower().strip("[]"))
        names.add(socket.gethostname().lower())
        self._names = frozenset(n for n in names if not n.startswith("."))
        self._suffixes = tuple(n for n in names if n.startswith("."))
        self._cors = frozenset(cors_origins)
        # Verdicts per header value: browsers repeat them, a client inventing new ones only misses.
        self._host_verdict = functools.lru_cache(_CACHED)(self._judge_host)
        self._origin_verdict = functools.lru_cache(_CACHED)(self._judge_origin)

    def _named(self, name: str) -> bool:
        """A DNS name the operator vouches for (not localhost or an IP address)."""
        if self._any_host or name in self._names:
            return True
        return any(name.endswith(s) or name == s[1:] for s in self._suffixes)

    def _judge_host(self, value: str) -> tuple[int, str]:
        """(0, "") to serve a ``Host`` value, else the status and message to refuse it with."""
        host = _authority(value)
        if host is None:
            return 400, f"Host header {shown(value)} is not host[:port]"
        if _is_ip(host[0]) or _is_loopback(host[0]) or self._named(host[0]):
            return 0, ""
        return 403, (
            f"Host {shown(host[0])} is not a name this server answers to (a DNS name rebound "
            "to it?): list it in the security setting allowed_hosts to serve it"
        )

    def _judge_origin(self, origin: str, host: str | None, scheme: str) -> bool:
        """Whether a page at ``origin`` may call this server, reached as ``host``."""
        if origin in self._cors or "*" in self._cors:
            return True
        found = _ORIGIN.fullmatch(origin.strip().lower())
        parsed = _authority(found["authority"]) if found else None
        if found is None or parsed is None:
            return False  # "null" (sandboxed frames, files), extensions, garbage
        name, port = parsed[0], parsed[1] or _DEFAULT_PORTS[found["scheme"]]
        own = _authority(host) if host else None
        if own is not None and found["scheme"] == scheme:
            if (name, port) == (own[0], own[1] or _DEFAULT_PORTS.get(scheme)):
                return True  # same origin: this server's own page
        return _is_loopback(name) or self._named(name)

    @staticmethod
    def _check_content_type(request: web.Request) -> None:
        if request.method in _BODILESS:
            return
        value = request.headers.get(hdrs.CONTENT_TYPE)
        if value is None or value in BODY_TYPES or request.content_type in BODY_TYPES:
            return
        raise web.HTTPUnsupportedMediaType(
            text=f"Content-Type {shown(value)} is not accepted: send {BODY_TYPES[0]} "
            f"(curl: -H 'Content-Type: application/json') or {BODY_TYPES[1]} with the "
            "binary tensor extension"
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse, before any handler reads a byte of the body, what a browser was tricked into."""
        host = request.headers.get(hdrs.HOST)  # None: HTTP/1.0 without Host, never a browser
        if host is not None:
            status, message = self._host_verdict(host)
            if status:
                raise (web.HTTPForbidden if status == 403 else web.HTTPBadRequest)(text=message)
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not self._origin_verdict(origin, host, request.scheme):
            raise web.HTTPForbidden(
                text=f"requests from web pages at Origin {shown(origin)} are refused: name it "
                "with --http-cors-origin (or its host in allowed_hosts) to let its pages call "
                "this API"
            )
        self._check_content_type(request)
        return await handler(request)

    @staticmethod
    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: the security headers on every answer, errors included."""
        response.headers.update(HEADERS)
        response.headers[hdrs.SERVER] = SERVER_NAME
        if response.status == 401:
            response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="model control"'

    def install(self, app: web.Application) -> None:
        """Add the headers hook; the middleware goes in the list the app is built with."""
        app.on_response_prepare.append(self.headers)
