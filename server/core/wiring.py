"""The core assembled from the settings, once: metrics -> model manager -> data plane.

The single server (``server/app.py``) and each cluster replica
(``server/cluster/replica.py``) build the same objects the same way from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.core.dataplane import DataPlane
from server.core.images import ImagePipeline
from server.core.logsettings import LogControl
from server.core.metrics import Metrics
from server.core.models import ModelManager
from server.core.shared_memory import SharedMemoryManager
from server.core.trace import Tracer
from server.settings import Settings


@dataclass
class Core:
    settings: Settings
    metrics: Metrics
    manager: ModelManager
    plane: DataPlane


def build_core(settings: Settings) -> Core:
    metrics = Metrics.create()
    manager = ModelManager(settings.models, metrics, settings.batching, settings.repository)
    limit = settings.protocol.max_message_bytes
    plane = DataPlane(
        manager,
        max_input_bytes=limit,
        shm=SharedMemoryManager(enabled=settings.protocol.shared_memory, max_bytes=limit),
        images=ImagePipeline(settings.images),
        max_spatial_size=settings.models.max_spatial_size,
        request_limits=settings.requests,
        tracer=Tracer(settings.tracing),
        logs=LogControl(),
    )
    return Core(settings, metrics, manager, plane)
