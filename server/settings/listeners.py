"""Where the server listens, for how long it drains, and its TLS files."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from server.settings.base import Section, setting


class ListenerSettings(Section):
    """The three ports follow Triton's: HTTP 8000, gRPC 8001, metrics 8002."""

    host: str = setting("0.0.0.0", flag="--host")
    """Address gRPC and HTTP/REST bind to (127.0.0.1 keeps them local)."""
    grpc_port: int = setting(8001, flag="--grpc-port", ge=0, le=65535)
    """KServe v2 gRPC port; 0 picks a free one."""
    http_port: int = setting(8000, flag="--http-port", ge=-1, le=65535)
    """KServe v2 HTTP/REST port and the try-it page; 0 picks a free one, -1 disables HTTP."""
    http_cors_origins: tuple[str, ...] = setting((), flag="--http-cors-origin", metavar="ORIGIN")
    """Browser pages from these origins (or *) may call the REST API (repeatable)."""
    metrics_port: int = setting(8002, flag="--metrics-port", ge=-1, le=65535)
    """Prometheus /metrics port; -1 disables it."""
    metrics_host: str = setting("0.0.0.0", flag="--metrics-host")
    """Address /metrics binds to (127.0.0.1 keeps metrics local)."""
    grace_seconds: float = setting(30.0, flag="--grace-seconds", ge=0)
    """On SIGTERM, how long accepted requests may take to finish, seconds."""


class TlsSettings(Section):
    """PEM files: with a certificate and key, gRPC and HTTP are served over TLS."""

    cert: Path | None = setting(None, flag="--tls-cert")
    """PEM certificate chain: serve gRPC and HTTP over TLS."""
    key: Path | None = setting(None, flag="--tls-key")
    """PEM private key of the certificate."""
    client_ca: Path | None = setting(None, flag="--tls-client-ca")
    """PEM CA: require client certificates it signed (mutual TLS)."""

    @model_validator(mode="after")
    def _pairs(self) -> TlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.client_ca is not None and self.cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert is not None
