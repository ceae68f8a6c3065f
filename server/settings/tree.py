"""The root of the settings tree: one field per section."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.settings.base import setting
from server.settings.cluster import ClusterSettings
from server.settings.limits import HttpLimits, RequestLimits
from server.settings.listeners import ListenerSettings, TlsSettings
from server.settings.models import BatchingSettings, ModelSettings
from server.settings.repository import RepositorySettings
from server.settings.runtime import ImageSettings, MemorySettings, ProtocolSettings
from server.settings.security import SecuritySettings
from server.settings.tracing import TraceSettings

ENV_PREFIX = "CNN_SERVING_"
ENV_NESTED = "__"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Everything ``python -m server`` and ``python -m server.cluster`` can be told; each
    section documents its fields."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    listeners: ListenerSettings = ListenerSettings()
    """Ports, addresses and draining."""
    tls: TlsSettings = TlsSettings()
    """TLS for gRPC and HTTP."""
    models: ModelSettings = ModelSettings()
    """The repository and the models' runtimes."""
    batching: BatchingSettings = BatchingSettings()
    """Dynamic batching overrides."""
    repository: RepositorySettings = RepositorySettings()
    """Reading and loading repository entries: file bounds, warm-up, load timeout."""
    protocol: ProtocolSettings = ProtocolSettings()
    """Message bounds and shared memory."""
    http: HttpLimits = HttpLimits()
    """HTTP connection, body and JSON budgets."""
    requests: RequestLimits = RequestLimits()
    """Per-request bounds on both protocols."""
    images: ImageSettings = ImageSettings()
    """The image path."""
    memory: MemorySettings = MemorySettings()
    """Returning freed memory."""
    security: SecuritySettings = SecuritySettings()
    """Model control, its credential, and who may call over HTTP."""
    tracing: TraceSettings = TraceSettings()
    """Triton's trace extension: the settings a server starts with."""
    cluster: ClusterSettings = ClusterSettings()
    """The Ray Serve cluster (``python -m server.cluster`` only)."""
    log_level: LogLevel = setting("INFO", flag="--log-level")
    """Python logging level of the server's log."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value
