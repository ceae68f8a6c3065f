"""Budgets a hostile client cannot talk its way past: HTTP connections and bodies, and
the counts and explanation work of one inference request (issue 25).

nginx's ``client_body_timeout``, ``keepalive_timeout`` and ``client_max_body_size`` are
the model for the HTTP half; the request half bounds what both frontends accept before
any per-item work is done.
"""

from __future__ import annotations

from server.settings.base import Section, setting

KiB, MiB = 1 << 10, 1 << 20


class HttpLimits(Section):
    """Connections, bodies and parsing of the HTTP/REST listener (server/http/budgets.py)."""

    keepalive_timeout: float = setting(75.0, gt=0)
    """Seconds an idle HTTP connection is kept (also bounds sending a request's headers)."""

    body_timeout: float = setting(60.0, gt=0)
    """Seconds allowed between two reads of a request body; then 408 and the connection closed."""

    max_connections: int = setting(1000, ge=1)
    """HTTP connections open at once; more get 503 and are closed (fit to the open-file limit)."""

    max_connections_per_peer: int = setting(128, ge=1)
    """HTTP connections open at once from one client IP address; more get 503 and are closed."""

    max_body_mb_in_flight: int = setting(256, ge=1)
    """MiB of request bodies received or held by all HTTP requests; beyond it 503, nothing read."""

    max_json_header_kb: int = setting(1024, ge=1)
    """KiB of JSON before a binary-extension request's tensors (Inference-Header-Content-Length)."""

    max_control_body_kb: int = setting(64, ge=1)
    """KiB of body accepted by requests other than inference and load (repository index,
    unload, shared-memory registration); a load carrying model files may use the message
    limit."""

    json_on_loop_kb: int = setting(64, ge=1)
    """KiB of JSON parsed or written on the event loop; larger goes to a worker process."""

    json_workers: int = setting(2, ge=1)
    """Worker processes that parse and write large JSON bodies (started on first use)."""

    @property
    def max_body_bytes_in_flight(self) -> int:
        return self.max_body_mb_in_flight * MiB

    @property
    def json_on_loop_bytes(self) -> int:
        return self.json_on_loop_kb * KiB


class RequestLimits(Section):
    """What one inference request may ask for, checked by both frontends before any work."""

    max_inputs: int = setting(16, ge=1)
    """Input tensors named in one inference request."""

    max_outputs: int = setting(16, ge=1)
    """Output tensors requested in one inference request."""

    max_parameters: int = setting(64, ge=1)
    """Parameters in one inference request: its own, every input's and every output's together."""

    explain_timeout: float = setting(60.0, ge=0)
    """Seconds an explanation may take unless the client's deadline is sooner (0: no default)."""

    explain_chunk_mb: int = setting(32, ge=1)
    """MiB of occluded copies queued at once by one explanation (also within the message size)."""

    explain_chunk_pixels: int = setting(16 * 224 * 224, ge=1)
    """Pixels (height x width, all copies) of occluded copies queued at once; one copy at least."""
