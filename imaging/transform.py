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


def resize_crop(image: Image.Image, pre: Preprocess, *, exact: bool = False) -> np.ndarray:
    """Short side to ``resize_size``, centre crop to ``crop_size``: HWC uint8 pixels.

    By default only the crop is resampled (Pillow's ``box``): the pixels outside it
    would be thrown away, and skipping them cuts the resize's CPU by about a third.
    The filter and its scale are the same, so pixels differ from resize-then-crop
    by at most 1 (rounding of the sample positions) on a few per cent of them;
    ``exact`` keeps torchvision's two steps (the accuracy reference).
    """
    width, height = image.size
    new_w, new_h = resized_size(width, height, pre)
    left = int(round((new_w - pre.crop_size) / 2.0))
    top = int(round((new_h - pre.crop_size) / 2.0))
    crop = (left, top, left + pre.crop_size, top + pre.crop_size)
    if (new_w, new_h) == (width, height):
        image = image.crop(crop)
    elif exact:
        image = image.resize((new_w, new_h), _resample(pre)).crop(crop)
    else:
        sx, sy = width / new_w, height / new_h
        box = (crop[0] * sx, crop[1] * sy, crop[2] * sx, crop[3] * sy)
        image = image.resize((pre.crop_size, pre.crop_size), _resample(pre), box=box)
    pixels = np.asarray(image)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _resample(pre: Preprocess) -> Image.Resampling:
    return _RESAMPLE.get(pre.interpolation, Image.Resampling.BILINEAR)


def normalise_into(pixels: np.ndarray, out: np.ndarray, pre: Preprocess) -> None:
    """``(pixels / 255 - mean) / std`` per channel, written into ``out`` (CHW float32)."""
    for c in range(out.shape[0]):
        # One multiply-add per pixel; the uint8 -> float32 cast happens inside the ufunc.
        np.multiply(pixels[:, :, c], np.float32(1.0 / (255.0 * pre.std[c])), out=out[c])
        out[c] -= np.float32(pre.mean[c] / pre.std[c])


def write_row(image: Image.Image, out: np.ndarray, pre: Preprocess, *, exact: bool = False) -> None:
    normalise_into(resize_crop(image, pre, exact=exact), out, pre)
