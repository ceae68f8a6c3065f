"""Command-line flags of the image path (``python -m server --help`` lists them)."""

from __future__ import annotations

import argparse

from imaging.decode import ImageLimits
from server.core.images import ImageOptions, MiB


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    base, limits = ImageOptions(), ImageLimits()
    group = parser.add_argument_group("images (BYTES and UINT8 inputs)")
    group.add_argument(
        "--decode-threads",
        type=int,
        default=base.threads,
        help="threads decoding and preprocessing images (default 0: one per core)",
    )
    group.add_argument(
        "--max-image-pixels",
        type=int,
        default=limits.max_pixels,
        help=f"largest source image, pixels, read from its header (default {limits.max_pixels:,})",
    )
    group.add_argument(
        "--max-image-aspect",
        type=float,
        default=limits.max_aspect,
        help=f"largest long/short side ratio (default {limits.max_aspect:g})",
    )
    group.add_argument(
        "--max-resized-pixels",
        type=int,
        default=limits.max_resized_pixels,
        help="largest image after the short-side resize, pixels "
        f"(default {limits.max_resized_pixels:,})",
    )
    group.add_argument(
        "--max-images-in-flight",
        type=int,
        default=base.max_images_in_flight,
        help="images per model decoding or waiting to decode "
        f"(default {base.max_images_in_flight}); beyond: RESOURCE_EXHAUSTED",
    )
    group.add_argument(
        "--max-image-mb-in-flight",
        type=int,
        default=base.max_bytes_in_flight // MiB,
        help="encoded/pixel MiB per model decoding or waiting to decode "
        f"(default {base.max_bytes_in_flight // MiB}); beyond: RESOURCE_EXHAUSTED",
    )


def image_options(parser: argparse.ArgumentParser, a: argparse.Namespace) -> ImageOptions:
    """The parsed flags as options; a value out of range ends with the flag named."""
    positive = {
        "--max-image-pixels": a.max_image_pixels,
        "--max-resized-pixels": a.max_resized_pixels,
        "--max-images-in-flight": a.max_images_in_flight,
        "--max-image-mb-in-flight": a.max_image_mb_in_flight,
    }
    for flag, value in positive.items():
        if value < 1:
            parser.error(f"{flag} {value}: must be >= 1")
    if a.max_image_aspect < 1 or a.decode_threads < 0:
        parser.error("--max-image-aspect must be >= 1 and --decode-threads >= 0")
    return ImageOptions(
        limits=ImageLimits(a.max_image_pixels, a.max_image_aspect, a.max_resized_pixels),
        threads=a.decode_threads,
        max_images_in_flight=a.max_images_in_flight,
        max_bytes_in_flight=a.max_image_mb_in_flight * MiB,
    )
