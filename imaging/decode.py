"""Encoded bytes -> a Pillow image holding only the pixels the model needs.

Limits are checked from the header, before any pixel is decoded: the source
pixel count (decompression bombs), the aspect ratio and the pixel count after
the resize step (a 20000x2 PNG is tiny, but resizing its short side to 256
makes a 2.5-gigapixel image). JPEG is decoded with libjpeg's DCT-domain
scaling (Pillow's draft mode) to the smallest 1/2, 1/4 or 1/8 scale whose
short side is still >= twice the resize: at once the resize it must do, the
top-1 class agreed with the full decode on 97.7 % of the evaluation photos,
at twice on 99.5 % for 30 % more CPU (docs/images.md). Pillow's draft mode was
measured as fast as simplejpeg and PyTurboJPEG on the same files, with EXIF,
CMYK and greyscale handled by one library.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modelrepo.spec import Preprocess

# What Pillow may try: the formats this server documents, not every decoder Pillow has
# (TIFF, PSD, EPS, ... widen what untrusted bytes can reach).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
_BUFFER_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")
DRAFT_MARGIN = 2  # decode JPEG to a short side >= this many times the resize size


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on the work one image may cause; ``flag`` names say how to change them."""

    max_pixels: int = 50_000_000  # source pixels (--max-image-pixels)
    max_aspect: float = 20.0  # long side / short side (--max-image-aspect)
    max_resized_pixels: int = 4_000_000  # after the short-side resize (--max-resized-pixels)


DEFAULT_LIMITS = ImageLimits()


class ImageDecodeError(ValueError):
    """Bytes that are not an image we can decode."""


class ImageLimitError(ImageDecodeError):
    """An image refused by one of the ``ImageLimits`` before decoding."""


def resized_size(width: int, height: int, pre: Preprocess) -> tuple[int, int]:
    """The size after scaling the short side to ``resize_size`` (never under the crop)."""
    scale = pre.resize_size / min(width, height)
    return max(pre.crop_size, round(width * scale)), max(pre.crop_size, round(height * scale))


def check_size(width: int, height: int, pre: Preprocess, limits: ImageLimits) -> None:
    """Refuse a size before any work is spent on it; the message names the limit."""
    if width < 1 or height < 1:
        raise ImageLimitError(f"image of {width}x{height} pixels has no pixels")
    if width * height > limits.max_pixels:
        raise ImageLimitError(
            f"image of {width}x{height} pixels exceeds the limit of {limits.max_pixels:,} "
            "pixels (--max-image-pixels)"
        )
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        raise ImageLimitError(
            f"image of {width}x{height} pixels has aspect ratio {aspect:,.1f}, over the limit "
            f"of {limits.max_aspect:g} (--max-image-aspect)"
        )
    new_w, new_h = resized_size(width, height, pre)
    if new_w * new_h > limits.max_resized_pixels:
        raise ImageLimitError(
            f"image of {width}x{height} pixels resizes to {new_w}x{new_h}, over the limit of "
            f"{limits.max_resized_pixels:,} resized pixels (--max-resized-pixels)"
        )


def _to_mode(image: Image.Image, color_mode: str) -> Image.Image:
    if image.mode in _SIXTEEN_BIT:  # 16-bit greyscale PNG: scale to 8 bits, not clip
        scaled = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
    return image if image.mode == color_mode else image.convert(color_mode)


def _open(data: bytes, pre: Preprocess, limits: ImageLimits, draft: bool) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    check_size(width, height, pre, limits)
    if draft and image.format == "JPEG":
        side = DRAFT_MARGIN * max(pre.resize_size, pre.crop_size)
        # libjpeg picks the largest 1/s with both sides still >= side: the short one decides.
        image.draft(None, (side, side))
    return image


def decode(
    data: bytes,
    pre: Preprocess | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
    draft: bool = True,
) -> Image.Image:
    """Decode (at reduced scale where JPEG allows), apply EXIF rotation, convert.

    ``draft=False`` is the reference path: full-size decode. Any failure inside
    Pillow on these bytes means they are not an image we can use: every
    exception becomes ``ImageDecodeError`` (a corrupt file reaches struct, index
    and type errors deep in the decoders, not only OSError).
    """
    pre = pre or Preprocess()
    if not data:
        raise ImageDecodeError("empty image: 0 bytes")
    try:
        image = _open(data, pre, limits, draft)
        image.load()
        return _to_mode(ImageOps.exif_transpose(image), pre.color_mode)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own, far above ours
        raise ImageLimitError(
            f"image exceeds the limit of {limits.max_pixels:,} pixels (--max-image-pixels): {exc}"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"cannot decode image ({len(data)} bytes): not a {'/'.join(FORMATS)} file"
        ) from exc
    except Exception as exc:
        reason = _BUFFER_REPR.sub("the data", str(exc))  # no memory addresses in messages
        raise ImageDecodeError(
            f"cannot decode image ({len(data)} bytes): {type(exc).__name__}: {reason}"
        ) from exc


def from_pixels(
    pixels: np.ndarray, pre: Preprocess, limits: ImageLimits = DEFAULT_LIMITS
) -> Image.Image:
    """An HWC uint8 array (3 channels, or 1 for greyscale models) as an image, size-checked."""
    height, width = pixels.shape[:2]
    check_size(width, height, pre, limits)
    if width < pre.crop_size or height < pre.crop_size:
        raise ImageLimitError(
            f"pixels of {width}x{height} are smaller than the crop size {pre.crop_size}: "
            f"send H, W >= {pre.crop_size}"
        )
    mode = "RGB" if pixels.shape[2] == 3 else "L"
    return _to_mode(
        Image.fromarray(np.ascontiguousarray(pixels[..., 0] if mode == "L" else pixels), mode),
        pre.color_mode,
    )
