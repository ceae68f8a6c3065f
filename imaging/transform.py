"""A decoded image -> one row of the model's input batch, written in place.

Resize the short side, centre-crop (both on uint8 pixels, in Pillow), then
scale and normalise straight into the caller's float32 CHW slot: no
per-image float temporaries, no stack/concatenate copies afterwards. This is
torchvision's evaluation transform (Resize + CenterCrop + Normalize).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from imaging.decode import resized_size
from modelrepo.spec import Preprocess

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def channels(pre: Preprocess) -> int:
    return 1 if pre.color_mode == "L" else 3


def batch_buffer(n: int, pre: Preprocess) -> np.ndarray:
    """An uninitialised NCHW float32 batch that ``write_row`` fills row by row."""
    return np.empty((n, channels(pre), pre.crop_size, pre.crop_size), dtype=np.float32)


def resize_crop(image: Image.Image, pre: Preprocess) -> np.ndarray:
    """Short side to ``resize_size``, centre crop to ``crop_size``: HWC uint8 pixels."""
    width, height = image.size
    new_w, new_h = resized_size(width, height, pre)
    if (new_w, new_h) != (width, height):
        resample = _RESAMPLE.get(pre.interpolation, Image.Resampling.BILINEAR)
        image = image.resize((new_w, new_h), resample)
    left = int(round((new_w - pre.crop_size) / 2.0))
    top = int(round((new_h - pre.crop_size) / 2.0))
    image = image.crop((left, top, left + pre.crop_size, top + pre.crop_size))
    pixels = np.asarray(image)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def normalise_into(pixels: np.ndarray, out: np.ndarray, pre: Preprocess) -> None:
    """``(pixels / 255 - mean) / std`` per channel, written into ``out`` (CHW float32)."""
    for c in range(out.shape[0]):
        # One multiply-add per pixel; the uint8 -> float32 cast happens inside the ufunc.
        np.multiply(pixels[:, :, c], np.float32(1.0 / (255.0 * pre.std[c])), out=out[c])
        out[c] -= np.float32(pre.mean[c] / pre.std[c])


def write_row(image: Image.Image, out: np.ndarray, pre: Preprocess) -> None:
    normalise_into(resize_crop(image, pre), out, pre)
