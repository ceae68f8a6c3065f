"""Settings of the model repository as the server reads it: size bounds, warm-up, time.

Every bound here exists because a repository entry is data: a FIFO, a link to
``/dev/zero`` or a ``preferred_batch_size: 400000`` must fail its own load with a
message, never freeze or bloat the server (docs/guarantees.md).
"""

from __future__ import annotations

from modelrepo.reading import DEFAULT_LIMITS, ReadLimits
from server.settings.base import Section, setting

MiB = 1 << 20


class RepositorySettings(Section):
    """Reading and loading repository entries."""

    load_timeout_s: float = setting(300.0, gt=0)
    """Seconds one model load may take (reading, building every instance, warm-up); past
    it the load fails and its model's lock is freed, whatever the stuck thread does."""

    config_bytes: int = setting(DEFAULT_LIMITS.config_bytes, ge=1024)
    """Largest config.pbtxt (or load request `config` parameter) read, in bytes."""

    labels_bytes: int = setting(DEFAULT_LIMITS.labels_bytes, ge=1024)
    """Largest labels file read, in bytes."""

    report_bytes: int = setting(DEFAULT_LIMITS.report_bytes, ge=1024)
    """Largest export.json read, in bytes."""

    cam_head_bytes: int = setting(DEFAULT_LIMITS.cam_head_bytes, ge=1024)
    """Largest cam_head.npz read (and its arrays unpacked), in bytes."""

    warmup_bytes: int = setting(256 * MiB, ge=1024)
    """Largest warm-up input (batch size x one image's FP32 bytes); a preferred batch size
    past it refuses the model instead of allocating."""

    def read_limits(self) -> ReadLimits:
        """The byte bounds as the repository readers take them."""
        return ReadLimits(
            config_bytes=self.config_bytes,
            labels_bytes=self.labels_bytes,
            report_bytes=self.report_bytes,
            cam_head_bytes=self.cam_head_bytes,
        )
