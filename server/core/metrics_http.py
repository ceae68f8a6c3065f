"""The metrics port: Prometheus' WSGI app behind a path check, with a socket timeout.

prometheus_client's own ``start_http_server`` answered every path (even
``/../../etc/passwd``) with the metrics page, and kept a connection that sent
non-HTTP bytes (a TLS ClientHello) open until the client gave up. Here only
``/metrics`` is served (404 elsewhere), a connection whose first byte cannot
start an HTTP request is closed at once, and a stalled one after ``TIMEOUT_S``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

PATHS = ("/metrics",)
TIMEOUT_S = 10.0
_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # GET, HEAD, POST, ...


class _Handler(WSGIRequestHandler):
    timeout = TIMEOUT_S  # StreamRequestHandler sets it on the socket

    def handle(self) -> None:
        try:
            first = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:  # timed out or reset before a byte came
            return
        if first and first[0] in _METHOD_START:
            super().handle()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base's name)
        """Quiet, as prometheus_client's own handler: scrapes would flood the log."""


def _only_metrics(app: Callable) -> Callable:
    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in PATHS:
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: this port serves /metrics only\n"]

    return guarded


def serve_metrics(registry: CollectorRegistry, port: int, addr: str) -> ThreadingWSGIServer:
    """Listen on ``addr:port`` in a daemon thread; call ``shutdown()`` to stop."""
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    app = _only_metrics(make_wsgi_app(registry))
    httpd = make_server(addr, port, app, server_class, handler_class=_Handler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
