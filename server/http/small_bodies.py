"""The small JSON object bodies of the control routes (shared-memory registration, trace
and log settings): read with a byte cap, strict JSON, one message family."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from server.core.errors import InvalidArgument


def _no_constant(name: str) -> Any:
    raise ValueError(f"bare {name} is not JSON")


async def read_object(request: web.Request, limit: int, what: str) -> dict[str, Any]:
    """``what``'s JSON object; refused unread when its Content-Length is over ``limit``,
    counted as it is read when chunked. An empty body is ``{}``."""
    if (request.content_length or 0) > limit:
        raise InvalidArgument(f"{what} is at most {limit} bytes, got {request.content_length}")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise InvalidArgument(f"{what} is at most {limit} bytes")
    try:
        doc = json.loads(raw or b"{}", parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc
