"""Encoded JPEG/PNG bytes -> normalised NCHW float32, as a model's config says.

Pillow and numpy only (no torch). The fast path (``preprocess_into``) decodes
JPEG at reduced scale and writes each image once into the batch; the
reference path (``reference``) is torchvision's evaluation transform on a
full-size decode, kept to prove the fast path answers the same.
"""

from __future__ import annotations

import numpy as np

from imaging.decode import (
    DEFAULT_LIMITS,
    FORMATS,
    ImageDecodeError,
    ImageLimitError,
    ImageLimits,
    decode,
)
from imaging.transform import batch_buffer, resize_crop, write_row
from modelrepo.spec import Preprocess

__all__ = [
    "FORMATS",
    "ImageDecodeError",
    "ImageLimitError",
    "ImageLimits",
    "MAX_PIXELS",
    "decode",
    "decode_crop",
    "preprocess",
    "preprocess_batch",
    "preprocess_into",
    "reference",
]

MAX_PIXELS = DEFAULT_LIMITS.max_pixels


def decode_crop(data: bytes, pre: Preprocess, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode ``data``, resize and centre-crop it: HWC uint8, not yet normalised (the
    server normalises it into the batch that runs it, ``imaging/pixelrows.py``)."""
    return resize_crop(decode(data, pre, limits), pre)


def preprocess_into(
    data: bytes, out: np.ndarray, pre: Preprocess, limits: ImageLimits = DEFAULT_LIMITS
) -> None:
    """Decode ``data`` and write its model input into ``out`` (one CHW row of a batch)."""
    write_row(decode(data, pre, limits), out, pre)


def preprocess(data: bytes, pre: Preprocess) -> np.ndarray:
    out = batch_buffer(1, pre)
    preprocess_into(data, out[0], pre)
    return out[0]


def reference(data: bytes, pre: Preprocess) -> np.ndarray:
    """Full-size decode, resize, then crop (torchvision's evaluation transform): the
    accuracy baseline."""
    out = batch_buffer(1, pre)
    write_row(decode(data, pre, draft=False), out[0], pre, exact=True)
    return out[0]


def preprocess_batch(images: list[bytes], pre: Preprocess) -> np.ndarray:
    out = batch_buffer(len(images), pre)
    for data, row in zip(images, out, strict=True):
        preprocess_into(data, row, pre)
    return out
