"""A request body that is not valid protobuf, kept as a value instead of an exception.

grpcio answers a body it cannot parse with UNKNOWN and a logged traceback; a
client sending bytes is sending bad input. Both entry points that receive raw
bodies (the gRPC listener, and Ray's gRPC proxy in front of the cluster's
ingress) deserialize leniently with ``lenient`` and ask ``undecodable`` for the
INVALID_ARGUMENT message, so the check and its wording live here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class Undecodable:
    """Stands in for the request a body failed to parse into."""

    type_name: str
    error: str


def lenient(deserialize: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    """``deserialize`` that returns an ``Undecodable`` instead of raising ``DecodeError``."""

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return Undecodable(type_name, str(exc))

    return parse


def undecodable(request: Any) -> str | None:
    """The INVALID_ARGUMENT message for a body that did not parse; None for a message."""
    if type(request) is Undecodable:
        return f"request body is not a valid {request.type_name} message: {request.error}"
    return None
