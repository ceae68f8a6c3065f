"""Limits that bound a request's work before it is queued.

A model exported with dynamic height and width (``dims: [3, -1, -1]``) accepts
any spatial size, and compute and memory grow with it: an FP32 [1, 3, 1, 4000000]
took 5 s and left the server 2 GB larger. Each dynamic dimension is therefore
capped per model: config.pbtxt's parameter ``max_spatial_size``, else a multiple
of the model's crop size; the server's ``--max-spatial-size`` overrides both.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelrepo.spec import ModelSpec
from server.core.errors import InvalidArgument

SPATIAL_PARAM = "max_spatial_size"
CROP_MULTIPLE = 4  # default per side: 4x the crop size (896 for a 224 crop)


def max_spatial_size(spec: ModelSpec, override: int | None = None) -> tuple[int, str]:
    """The largest size of a dynamic dimension, and where that figure comes from."""
    if override:
        return override, "--max-spatial-size"
    params = spec.config.parameters
    if SPATIAL_PARAM in params:
        text = params[SPATIAL_PARAM].string_value
        if not text.strip().isdigit() or int(text) < 1:
            raise InvalidArgument(
                f"model '{spec.name}': config.pbtxt parameter {SPATIAL_PARAM} is {text!r}, "
                "not a positive integer"
            )
        return int(text), f"config.pbtxt parameter {SPATIAL_PARAM}"
    crop = spec.preprocess.crop_size
    return CROP_MULTIPLE * crop, f"{CROP_MULTIPLE}x the crop size {crop}"


def check_spatial(spec: ModelSpec, shape: Sequence[int], override: int | None = None) -> None:
    """Refuse a shape whose dynamic dimensions exceed the model's limit (batch excluded)."""
    dynamic = [i + 1 for i, d in enumerate(spec.input_dims) if d < 0]
    if not dynamic:
        return
    limit, source = max_spatial_size(spec, override)
    for axis in dynamic:
        if shape[axis] > limit:
            raise InvalidArgument(
                f"input shape {list(shape)}: dimension {axis} is {shape[axis]}, above the "
                f"limit max_spatial_size {limit} of model '{spec.name}' ({source})"
            )
