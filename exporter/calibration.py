"""Real images for calibration and precision gates, preprocessed as the model serves them.

A folder of JPEG/PNG files (searched recursively, so an ImageNet-style
``class/image.jpg`` layout works) is decoded and transformed by the server's
own ``imaging.preprocess`` with the ``Preprocess`` read from the model's
config.pbtxt parameters: calibration sees exactly the tensors the served
model will see. ``samples`` names the photos bundled with scikit-image and
scikit-learn; digit models fall back to held-out digits. Every set carries a
content hash, so export.json records precisely what a model was calibrated on.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter.samples import photo_paths
from imaging.preprocess import ImageDecodeError, preprocess
from modelrepo.spec import Preprocess

SAMPLES = "samples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class CalibrationError(ValueError):
    """A calibration folder that is missing, empty, or holds a file that is not an image."""


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed images (N x C x H x W float32) and where they came from."""

    x: np.ndarray
    names: tuple[str, ...]
    source: str
    sha256: str  # over every (name, file content) pair, in order

    def describe(self) -> dict[str, Any]:
        return {
            "count": len(self.names),
            "source": self.source,
            "sha256": self.sha256,
            "images": list(self.names),
        }


def image_files(folder: Path) -> list[Path]:
    """JPEG/PNG files under ``folder`` (recursively), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder '{folder}' does not exist or is not a folder")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise CalibrationError(
            f"calibration folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def spread(items: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` items, evenly spaced, so every class folder gets a share."""
    if len(items) <= limit:
        return list(items)
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in idx]


def from_bytes(blobs: list[tuple[str, bytes]], pre: Preprocess, source: str) -> ImageSet:
    """Preprocess named encoded images; a file that does not decode is named in the error."""
    digest = hashlib.sha256()
    arrays = []
    for name, data in blobs:
        try:
            arrays.append(preprocess(data, pre))
        except ImageDecodeError as exc:
            raise CalibrationError(f"calibration image '{name}' ({source}): {exc}") from exc
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return ImageSet(
        x=np.stack(arrays).astype(np.float32),
        names=tuple(name for name, _ in blobs),
        source=source,
        sha256=digest.hexdigest(),
    )


def sample_photos(pre: Preprocess, limit: int | None = None) -> ImageSet:
    """The bundled photographs (scikit-image, scikit-learn), as the model's input."""

    paths = sorted(photo_paths().items())
    if not paths:
        raise CalibrationError(
            "no bundled sample photos: install scikit-image and scikit-learn, "
            "or pass --calibration DIR"
        )
    blobs = [(name, path.read_bytes()) for name, path in spread(paths, limit or len(paths))]
    return from_bytes(blobs, pre, "bundled sample photos (scikit-image, scikit-learn)")


def heldout_digits(pre: Preprocess, count: int = 200) -> ImageSet:
    """Held-out scikit-learn digits rendered as PNG files (for the digit models' gates)."""
    from PIL import Image

    from exporter.digits import Recipe, split  # torch: LeNet digits only

    _, x_test, _, y_test = split(Recipe())
    blobs = []
    for i, (img, label) in enumerate(zip(x_test[:count], y_test[:count], strict=True)):
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, format="PNG")
        blobs.append((f"heldout-{i:04d}-digit{label}.png", buf.getvalue()))
    return from_bytes(blobs, pre, f"{len(blobs)} held-out scikit-learn digits (PNG)")


def load(calibration: str | Path, pre: Preprocess, limit: int = 256) -> ImageSet:
    """``calibration`` is a folder of images or ``samples``; at most ``limit`` images."""
    if str(calibration) == SAMPLES:
        return sample_photos(pre, limit)
    folder = Path(calibration)
    files = spread(image_files(folder), limit)
    blobs = [(str(p.relative_to(folder)), p.read_bytes()) for p in files]
    return from_bytes(blobs, pre, f"{folder.resolve()} ({len(files)} images)")


def default_images(pre: Preprocess, labels: str) -> ImageSet:
    """Real images for a gate when no calibration folder was given."""
    return heldout_digits(pre) if labels == "digits" else sample_photos(pre)
