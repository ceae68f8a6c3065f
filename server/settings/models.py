"""Which models are served, how their runtimes are set up, and how they batch.

Per-model settings stay in each model's ``config.pbtxt`` (the repository contract's
``ServingConfig``); the batching fields here override every model's when given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.settings.base import Section, setting


class ModelSettings(Section):
    """The repository, the models loaded from it and their ONNX Runtime sessions."""

    repository: Path | None = setting(None, flag="--model-repository", metavar="DIR")
    """The model repository (Triton's layout); required."""
    names: tuple[str, ...] = setting((), flag="--model", metavar="MODEL")
    """Load only these models (repeatable); default: every model in the repository."""
    allow_cpu_fallback: bool = setting(False, flag="--allow-cpu-fallback")
    """Run KIND_GPU models on the CPU when no GPU is usable."""
    intra_op_threads: int = setting(0, flag="--intra-op-threads", ge=0)
    """ONNX Runtime threads per instance; 0: config.pbtxt's, else 1 for a model under 20
    MMACs per image (its export.json), else the runtime's default."""
    onnxruntime_config: dict[str, str] = setting(
        {}, flag="--onnxruntime-config", metavar="KEY=VALUE"
    )
    """ONNX Runtime session config entries for every model (repeatable), e.g.
    session.intra_op.allow_spinning=1 (spinning is off by default: it cost more CPU than a
    small model's request); config.pbtxt's onnxruntime.* add per-model ones, these win."""
    warmup: bool = setting(True, flag="--no-warmup", negate=True)
    """Warm every instance up at each preferred batch size before reporting ready."""
    max_spatial_size: int | None = setting(None, flag="--max-spatial-size", ge=1)
    """Largest dynamic height/width of any model's input (default: config.pbtxt's
    max_spatial_size, else 4x its crop size)."""
    retire_timeout_s: float = setting(30.0, ge=0)
    """How long a replaced or unloaded version may finish the requests it accepted, seconds."""


class BatchingSettings(Section):
    """Dynamic batching; unset fields keep each model's config.pbtxt values."""

    enabled: bool = setting(True, flag="--no-batching", negate=True)
    """Batch concurrent requests (off: every request runs alone)."""
    max_batch_size: int | None = setting(None, flag="--max-batch-size", ge=1)
    """Largest batch, overriding config.pbtxt."""
    max_queue_delay_us: int | None = setting(None, flag="--max-queue-delay-us", ge=0)
    """How long a request may wait for others to join its batch, microseconds."""
    preferred_batch_size: tuple[int, ...] | None = setting(None, flag="--preferred-batch-size")
    """Batch sizes the batcher aims for, and warm-up runs (space-separated)."""
    max_queue_size: int | None = setting(None, flag="--max-queue-size", ge=1)
    """Queued images per model; beyond: RESOURCE_EXHAUSTED."""
    max_queue_share: float = setting(0.5, flag="--max-queue-share", gt=0, le=1)
    """The most of a model's queue one client (connection or stream) may hold (at least one
    batch)."""
    instance_count: int | None = setting(None, flag="--instance-count", ge=1)
    """Model instances (batches in flight at once), overriding instance_group."""

    def serving_overrides(self) -> dict[str, Any]:
        """The ServingConfig fields these settings override (``read_serving``'s keywords)."""
        given = {
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_us": self.max_queue_delay_us,
            "preferred_batch_sizes": self.preferred_batch_size or None,
            "max_queue_size": self.max_queue_size,
            "instance_count": self.instance_count,
        }
        return {key: value for key, value in given.items() if value is not None} | (
            {} if self.enabled else {"dynamic_batching": False}
        )
