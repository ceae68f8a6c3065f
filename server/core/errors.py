"""Errors the data plane raises, each tied to the gRPC status and the HTTP status it becomes.

The gRPC servicer and the HTTP frontend map them here and only here; anything
else is a bug and becomes INTERNAL (HTTP 500) with its message logged.
"""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500


class InvalidArgument(InferenceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(InferenceError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class AlreadyExists(InferenceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class Unavailable(InferenceError):
    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class FailedPrecondition(InferenceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(InferenceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429  # queue full: the client should back off and retry


class DeadlineExceeded(InferenceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 408  # the client's own timeout passed: not a server fault


class Unauthenticated(InferenceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401  # answered with WWW-Authenticate: Bearer


class Unimplemented(InferenceError):
    code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


def shown(text: str, limit: int = 64) -> str:
    """A client-sent string quoted for an error message, cut to ``limit`` characters.

    Echoing a 100 kB name back would overflow gRPC's metadata limit and the
    caller would get a transport error instead of ours.
    """
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def clip(message: str, limit: int = 2000) -> str:
    """Status messages travel as metadata (8 KiB limit) where every byte outside printable
    ASCII takes three: past it the caller would get a transport error instead of ours."""
    if len(message) <= limit and message.isascii() and message.isprintable():
        return message
    text = message[:limit].encode("ascii", "backslashreplace").decode()
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit and len(message) <= limit else f"{text[:limit]}... (cut)"
