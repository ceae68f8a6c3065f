"""Settings of the Triton-compatible extras (issue 27): the shared-memory routes over HTTP."""

from __future__ import annotations

from server.settings.base import Section, setting


class SharedMemoryHttp(Section):
    """Triton's ``/v2/systemsharedmemory`` and ``/v2/cudasharedmemory`` routes."""

    register_body_bytes: int = setting(64 << 10, ge=256, le=1 << 20, metavar="BYTES")
    """Largest body of a shared-memory registration (a few JSON fields); larger ones get 400
    unread."""
