"""Warm-up before a model reports ready, within what its config may ask for.

Each instance runs every preferred batch size once, so the first real requests do
not pay for the runtime's lazy allocations. The sizes come from config.pbtxt, so
they are checked first: a preferred size above ``max_batch_size`` is a config error
(as in Triton), and a batch whose input would pass the warm-up byte cap is refused
by name instead of being allocated (``preferred_batch_size: 400000`` would be GBs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from engines import Backend
from modelrepo.serving import ServingConfig
from modelrepo.spec import ModelConfigError, ModelSpec

log = logging.getLogger(__name__)

FIELD = "dynamic_batching.preferred_batch_size"


def warmup_sizes(spec: ModelSpec, serving: ServingConfig, cap_bytes: int) -> list[int]:
    """The batch sizes to warm up; ModelConfigError naming the field when one is refused."""
    config = spec.config
    preferred = config.dynamic_batching.preferred_batch_size
    if config.max_batch_size > 0:
        above = [b for b in preferred if b > config.max_batch_size]
        if above:
            raise ModelConfigError(
                f"model '{spec.name}': {FIELD} {above} larger than max_batch_size "
                f"{config.max_batch_size}"
            )
    image_bytes = int(np.prod(spec.image_dims, dtype=np.int64)) * 4  # FP32
    sizes = sorted({1, *serving.preferred_batch_sizes})
    for size in sizes:
        if size * image_bytes > cap_bytes:
            what = f"{FIELD} {size}" if size > 1 else f"input dims {list(spec.input_dims)}"
            raise ModelConfigError(
                f"model '{spec.name}': {what}: a warm-up batch of {size * image_bytes:,} bytes, "
                f"more than the {cap_bytes:,} allowed (repository setting warmup_bytes)"
            )
    return sizes


def warm_up(
    spec: ModelSpec,
    version: int,
    backends: list[Backend],
    sizes: list[int],
    check_stop: Callable[[], None] = lambda: None,
) -> None:
    """Run every size once per instance (sizes from ``warmup_sizes``); ``check_stop`` raises
    between runs when nobody waits for the load any more."""
    for size in sizes:
        x = np.zeros((size, *spec.image_dims), dtype=np.float32)
        for backend in backends:
            check_stop()
            try:
                backend.infer(x)
            except Exception as exc:  # typically config dims that the model file disagrees with
                raise ModelConfigError(
                    f"warm-up with input shape {list(x.shape)} (dims {list(spec.input_dims)} "
                    f"from config.pbtxt) failed: {exc}"
                ) from exc
    log.info("model %s version %d warmed up at batch sizes %s", spec.name, version, sizes)
