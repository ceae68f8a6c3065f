"""Errors the data plane raises, each tied to the gRPC status it becomes.

The servicer maps them in one place; anything else is a bug and becomes
INTERNAL with its message logged.
"""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(InferenceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(InferenceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(InferenceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unavailable(InferenceError):
    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(InferenceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(InferenceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(InferenceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(InferenceError):
    code = grpc.StatusCode.CANCELLED


class Unimplemented(InferenceError):
    code = grpc.StatusCode.UNIMPLEMENTED


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
