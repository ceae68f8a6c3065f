"""Triton's trace and logging extensions over HTTP/REST.

``GET/POST /v2/trace/setting`` and ``/v2/models/{name}/trace/setting`` read and change the
global or a model's trace setting (a ``null`` value clears a model's own value back to the
global one); ``GET/POST /v2/logging`` the server's logging. Values are JSON strings or
arrays of strings as Triton's clients send them (numbers are taken too). Errors reach the
client through the frontend's error middleware as ``{"error": ...}``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.core.dataplane import DataPlane
from server.core.errors import InvalidArgument
from server.http.small_bodies import read_object

MAX_BODY = 64 << 10  # a settings body is a few hundred bytes


async def _body(request: web.Request) -> dict[str, Any]:
    if request.method != "POST":
        return {}
    return await read_object(request, MAX_BODY, "a settings body")


def _values(key: str, value: Any) -> list[str] | None:
    """One trace setting's JSON value as the gRPC request carries it; None clears it."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in items):
        raise InvalidArgument(f"'{key}' takes a string or an array of strings, got {value!r:.64}")
    return [str(v) for v in items]


def add_routes(app: web.Application, plane: DataPlane) -> None:
    async def trace_setting(request: web.Request) -> web.Response:
        body = await _body(request)
        changes = {key: _values(key, value) for key, value in body.items()}
        answer = plane.trace_settings(request.match_info.get("name", ""), changes)
        return web.json_response({k: v if k == "trace_level" else v[0] for k, v in answer.items()})

    async def logging(request: web.Request) -> web.Response:
        return web.json_response(plane.logs.update(await _body(request)))

    for path in ("/v2/trace/setting", "/v2/models/{name}/trace/setting"):
        app.router.add_get(path, trace_setting)
        app.router.add_post(path, trace_setting)
    app.router.add_get("/v2/logging", logging)
    app.router.add_post("/v2/logging", logging)
