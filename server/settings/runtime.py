"""The protocol's message bounds, the image path and giving memory back."""

from __future__ import annotations

from imaging.decode import ImageLimits
from server.settings.base import Section, setting

MiB = 1 << 20
_IMAGE = ImageLimits()


class ProtocolSettings(Section):
    """Bounds shared by gRPC and HTTP."""

    max_message_mb: int = setting(64, flag="--max-message-mb", ge=1)
    """Largest message received or sent, MiB (64 holds 64 images of 512x512 FP32); larger:
    RESOURCE_EXHAUSTED (gRPC) or 413 (HTTP)."""
    shared_memory: bool = setting(True, flag="--no-shared-memory", negate=True)
    """Triton's system shared-memory extension (off: clients must send tensor bytes)."""

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * MiB


class ImageSettings(Section):
    """Encoded photos (BYTES) and UINT8 pixels: decoding threads and admission bounds."""

    decode_threads: int = setting(0, flag="--decode-threads", ge=0)
    """Threads decoding and preprocessing images (0: one per core)."""
    max_image_pixels: int = setting(_IMAGE.max_pixels, flag="--max-image-pixels", ge=1)
    """Largest source image, pixels, read from its header."""
    max_image_aspect: float = setting(_IMAGE.max_aspect, flag="--max-image-aspect", ge=1)
    """Largest long/short side ratio."""
    max_resized_pixels: int = setting(_IMAGE.max_resized_pixels, flag="--max-resized-pixels", ge=1)
    """Largest image after the short-side resize, pixels."""
    max_images_in_flight: int = setting(256, flag="--max-images-in-flight", ge=1)
    """Images per model decoding or waiting to decode; beyond: RESOURCE_EXHAUSTED."""
    max_image_mb_in_flight: int = setting(256, flag="--max-image-mb-in-flight", ge=1)
    """Encoded/pixel MiB per model decoding or waiting to decode; beyond: RESOURCE_EXHAUSTED."""

    def limits(self) -> ImageLimits:
        """The decoder's bounds (imaging/ is shared with the exporter)."""
        return ImageLimits(self.max_image_pixels, self.max_image_aspect, self.max_resized_pixels)

    @property
    def max_bytes_in_flight(self) -> int:
        return self.max_image_mb_in_flight * MiB


class MemorySettings(Section):
    """glibc keeps freed memory; the server hands it back while RSS is over its floor."""

    malloc_trim_mib: int = setting(64, flag="--malloc-trim-mib", ge=0)
    """Give freed memory back to the OS while RSS is this many MiB over its level after
    loading (0: never)."""
    malloc_arena_max: int = setting(2, flag="--malloc-arena-max", ge=0)
    """glibc malloc arenas (0: glibc's default)."""
    trim_interval_s: float = setting(1.0, gt=0)
    """How often RSS is checked against the floor, seconds."""
