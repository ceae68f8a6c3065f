"""Triton's shared-memory routes over HTTP: system regions, and CUDA as a GPU-less Triton.

The routes and bodies are Triton's (``/v2/systemsharedmemory[/region/NAME]/status``,
``.../region/NAME/register`` with ``{"key", "offset", "byte_size"}``, ``.../unregister``
and their ``cudasharedmemory`` twins), so ``tritonclient.http`` works unchanged. The
work and every safety check stay in the core (server/core/shared_memory.py,
server/core/cuda_shared_memory.py): the gRPC servicer calls the same methods.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from server.core.dataplane import DataPlane
from server.core.errors import InvalidArgument, shown
from server.http.small_bodies import read_object


def _int(doc: dict[str, Any], key: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(
            f"registration field {key!r} must be a non-negative integer, got {shown(repr(value))}"
        )
    return value


def _name(request: web.Request) -> str:
    return request.match_info.get("name", "")


class SharedMemoryRoutes:
    """Handlers for both extensions, each a few lines over the core's managers."""

    def __init__(self, plane: DataPlane, limit: int) -> None:
        self.plane, self.limit = plane, limit  # a registration is a few JSON fields

    async def system_status(self, request: web.Request) -> web.Response:
        regions = self.plane.shm.status(_name(request))
        return web.json_response(
            [
                {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in regions
            ]
        )

    async def system_register(self, request: web.Request) -> web.Response:
        doc = await read_object(request, self.limit, "a shared-memory registration body")
        key = doc.get("key")
        if not isinstance(key, str):
            got = shown(repr(key))
            raise InvalidArgument(f"registration field 'key' must be a string, got {got}")
        self.plane.shm.register(_name(request), key, _int(doc, "offset", 0), _int(doc, "byte_size"))
        return web.Response()

    async def system_unregister(self, request: web.Request) -> web.Response:
        self.plane.shm.unregister(_name(request))
        return web.Response()

    async def cuda_status(self, request: web.Request) -> web.Response:
        regions = self.plane.cuda_shm.status(_name(request))
        return web.json_response(
            [{"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size} for r in regions]
        )

    async def cuda_register(self, request: web.Request) -> web.Response:
        doc = await read_object(request, self.limit, "a shared-memory registration body")
        self.plane.cuda_shm.check_supported(_name(request))  # why first, as Triton without GPU
        handle = doc.get("raw_handle")
        encoded = handle.get("b64") if isinstance(handle, dict) else None
        if not isinstance(encoded, str):
            raise InvalidArgument("registration field 'raw_handle' must be {\"b64\": string}")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"raw_handle.b64 is not base64: {exc}") from None
        self.plane.cuda_shm.register(
            _name(request), raw, _int(doc, "device_id", 0), _int(doc, "byte_size")
        )
        return web.Response()

    async def cuda_unregister(self, request: web.Request) -> web.Response:
        self.plane.cuda_shm.unregister(_name(request))
        return web.Response()


def add_routes(app: web.Application, plane: DataPlane, limit: int) -> None:
    """Triton's routes for both shared-memory kinds, with and without a region name;
    ``limit``: the largest registration body (the HTTP section's control-body bound)."""
    routes = SharedMemoryRoutes(plane, limit)
    table = []
    for kind, status, register, unregister in (
        ("system", routes.system_status, routes.system_register, routes.system_unregister),
        ("cuda", routes.cuda_status, routes.cuda_register, routes.cuda_unregister),
    ):
        base = f"/v2/{kind}sharedmemory"
        region = f"{base}/region/{{name}}"
        table += [
            web.get(f"{base}/status", status),
            web.get(f"{region}/status", status),
            web.post(f"{region}/register", register),
            web.post(f"{base}/unregister", unregister),
            web.post(f"{region}/unregister", unregister),
        ]
    app.add_routes(table)
