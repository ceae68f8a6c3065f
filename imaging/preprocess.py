"""Encoded JPEG/PNG bytes -> normalised NCHW float32, as a model's config says.

Pillow only (no torch): resize the shorter side, centre-crop, scale to [0, 1],
subtract mean, divide by std: the torchvision/timm evaluation transform.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modelrepo.spec import Preprocess

# Refuse decompression bombs: a small file declaring a huge pixel count is refused
# from its header, before any pixel is decoded.
MAX_PIXELS = 50_000_000
# What Pillow may try: the formats this server documents, not every decoder Pillow has
# (TIFF, PSD, EPS, ... widen what untrusted bytes can reach).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


_BUFFER_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")


class ImageDecodeError(ValueError):
    """Bytes that are not an image we can decode."""


def decode(data: bytes, color_mode: str = "RGB") -> Image.Image:
    """Decode, apply EXIF rotation, convert to ``color_mode``.

    Any failure inside Pillow on these bytes means they are not an image we can
    use: every exception becomes ``ImageDecodeError`` (a corrupt file reaches
    struct, index and type errors deep in the decoders, not only OSError).
    """
    if not data:
        raise ImageDecodeError("empty image: 0 bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageDecodeError(
                f"image of {width}x{height} pixels exceeds the limit of {MAX_PIXELS:,} pixels"
            )
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale PNG
            scaled = np.asarray(image, dtype=np.float64) / 257.0
            image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
        return image.convert(color_mode)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own, far above ours
        raise ImageDecodeError(f"image exceeds the limit of {MAX_PIXELS:,} pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"cannot decode image ({len(data)} bytes): not a {'/'.join(FORMATS)} file"
        ) from exc
    except Exception as exc:
        reason = _BUFFER_REPR.sub("the data", str(exc))  # no memory addresses in messages
        raise ImageDecodeError(
            f"cannot decode image ({len(data)} bytes): {type(exc).__name__}: {reason}"
        ) from exc


def transform(image: Image.Image, pre: Preprocess) -> np.ndarray:
    """A decoded image -> CHW float32 in the model's normalisation."""
    resample = _RESAMPLE.get(pre.interpolation, Image.Resampling.BILINEAR)
    width, height = image.size
    scale = pre.resize_size / min(width, height)
    new_w, new_h = (
        max(pre.crop_size, round(width * scale)),
        max(pre.crop_size, round(height * scale)),
    )
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample)
    left = int(round((new_w - pre.crop_size) / 2.0))
    top = int(round((new_h - pre.crop_size) / 2.0))
    image = image.crop((left, top, left + pre.crop_size, top + pre.crop_size))
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(((array - mean) / std).transpose(2, 0, 1))


def preprocess(data: bytes, pre: Preprocess) -> np.ndarray:
    return transform(decode(data, pre.color_mode), pre)


def preprocess_batch(images: list[bytes], pre: Preprocess) -> np.ndarray:
    return np.stack([preprocess(data, pre) for data in images])
