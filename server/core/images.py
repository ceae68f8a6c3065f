"""The server's image path: admission, a decode pool sized to the cores, cancellation.

Encoded images (BYTES) and UINT8 pixel tensors are decoded, resized and cropped
to uint8 by threads of one pool (Pillow releases the GIL while it decodes and
resizes, so the images of one request and of concurrent requests run in
parallel, never on the event loop). A request's crops become a ``PixelRows``
(``imaging/pixelrows.py``) that the batch worker normalises straight into the
float32 batch the model reads: each image row is written once, in every batch.

Work is bounded before it is done: images waiting for or in decoding count
against the model's queue bound together with the rows the batcher holds,
and against per-model caps on images and bytes in flight; a refusal is
RESOURCE_EXHAUSTED naming the limit. Queued image requests hold uint8 crops,
a quarter of the bytes of their float rows. A request whose deadline passes or
whose caller cancels stops: images not yet started are never decoded.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from imaging.decode import ImageDecodeError, from_pixels
from imaging.pixelrows import PixelRows
from imaging.preprocess import decode_crop
from imaging.transform import channels, resize_crop
from modelrepo.spec import Preprocess
from server.core.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from server.core.models import ServedVersion
from server.settings.runtime import ImageSettings

MiB = 1 << 20


@dataclass
class _InFlight:
    images: int = 0
    nbytes: int = 0


class ImagePipeline:
    """One per server; requests of every model share the pool, accounting is per model."""

    def __init__(self, opts: ImageSettings | None = None) -> None:
        self.opts = opts = opts or ImageSettings()
        self.limits = opts.limits()
        self.threads = (
            opts.decode_threads or len(os.sched_getaffinity(0)) or 1
        )  # the cores we may use
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        self._lock = threading.Lock()
        self._flight: dict[str, _InFlight] = {}

    def in_flight(self, model: str) -> tuple[int, int]:
        with self._lock:
            flight = self._flight.get(model, _InFlight())
            return flight.images, flight.nbytes

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- admission --------------------------------------------------------
    def _admit(self, served: ServedVersion, n: int, nbytes: int) -> None:
        model, opts, queue = served.spec.name, self.opts, served.batcher
        with self._lock:
            flight = self._flight.setdefault(model, _InFlight())
            waiting = queue.queue_rows + flight.images
            if waiting + n > queue.config.max_queue_size:
                raise ResourceExhausted(
                    f"queue of model '{model}' is full: {waiting} images queued or decoding, "
                    f"limit {queue.config.max_queue_size} (--max-queue-size; request of {n} "
                    "images rejected)"
                )
            if flight.images + n > opts.max_images_in_flight:
                raise ResourceExhausted(
                    f"model '{model}' has {flight.images} images in flight, limit "
                    f"{opts.max_images_in_flight} (--max-images-in-flight; request of {n} rejected)"
                )
            if flight.nbytes + nbytes > opts.max_bytes_in_flight:
                raise ResourceExhausted(
                    f"model '{model}' has {flight.nbytes:,} image bytes in flight, limit "
                    f"{opts.max_bytes_in_flight:,} (--max-image-mb-in-flight; request of "
                    f"{nbytes:,} bytes rejected)"
                )
            flight.images += n
            flight.nbytes += nbytes

    def _release(self, model: str, nbytes: int) -> None:
        with self._lock:
            flight = self._flight[model]
            flight.images -= 1
            flight.nbytes -= nbytes

    # --- the two input forms ----------------------------------------------
    async def encoded(
        self, served: ServedVersion, name: str, elements: list[bytes], deadline: float | None
    ) -> PixelRows:
        """BYTES elements (encoded JPEG/PNG/WebP/BMP/GIF) -> the model's rows, as crops."""
        pre, limits = served.spec.preprocess, self.limits

        def job(i: int) -> np.ndarray:
            return decode_crop(elements[i], pre, limits)

        sizes = [len(e) for e in elements]
        return await self._run(served, name, pre, sizes, job, deadline)

    async def pixels(
        self, served: ServedVersion, name: str, array: np.ndarray, deadline: float | None
    ) -> PixelRows:
        """UINT8 [N, H, W, C] pixels -> resized and cropped rows, normalised when batched."""
        pre, limits = served.spec.preprocess, self.limits
        want = channels(pre)
        if array.ndim != 4 or array.shape[3] != want:
            raise InvalidArgument(
                f"input '{name}' of datatype UINT8 must have shape [N, H, W, {want}] "
                f"({pre.color_mode} pixels, H and W >= {pre.crop_size}), got {list(array.shape)}"
            )

        def job(i: int) -> np.ndarray:
            return resize_crop(from_pixels(array[i], pre, limits), pre)

        sizes = [array[0].nbytes] * len(array)
        return await self._run(served, name, pre, sizes, job, deadline)

    # --- running ----------------------------------------------------------
    async def _run(
        self,
        served: ServedVersion,
        name: str,
        pre: Preprocess,
        sizes: list[int],
        job: Callable[[int], np.ndarray],
        deadline: float | None,
    ) -> PixelRows:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed before the images were decoded")
        self._admit(served, len(sizes), sum(sizes))
        out = PixelRows(len(sizes), pre)
        with self._stopping() as stop:
            futures = []
            for i, size in enumerate(sizes):
                future = self._pool.submit(self._guarded, job, i, out, name, stop, deadline)
                future.add_done_callback(lambda _, s=size: self._release(served.spec.name, s))
                futures.append(future)
            await self._wait(futures, deadline)
        return out

    @staticmethod
    def _guarded(
        job: Callable[[int], np.ndarray],
        i: int,
        out: PixelRows,
        name: str,
        stop: threading.Event,
        deadline: float | None,
    ) -> bool:
        """One image, unless its request already failed, was cancelled or expired."""
        if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
            return False
        try:
            out.crops[i] = job(i)
        except ImageDecodeError as exc:
            stop.set()  # the request fails: its other images need not be decoded
            raise InvalidArgument(f"input '{name}' element {i}: {exc}") from exc
        return True

    @contextmanager
    def _stopping(self) -> Iterator[threading.Event]:
        """An event set when the request leaves early: pending images are then skipped."""
        stop = threading.Event()
        try:
            yield stop
        finally:
            stop.set()

    @staticmethod
    async def _wait(futures: list[Future[bool]], deadline: float | None) -> None:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        waiting = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        try:
            done = await asyncio.wait_for(waiting, timeout)
        except TimeoutError as exc:
            raise DeadlineExceeded("deadline passed while the images were decoded") from exc
        finally:
            for future in futures:  # on any early exit: drop what has not started
                future.cancel()
        if not all(done):
            raise DeadlineExceeded("deadline passed while the images were decoded")


def input_forms(pre: Preprocess, dims: tuple[int, ...]) -> dict[str, str]:
    """Datatype -> the layout the model's single input accepts in that form."""
    c, crop = channels(pre), pre.crop_size
    return {
        "FP32": f"[-1, {', '.join(map(str, dims))}] NCHW, already normalised",
        "BYTES": "[-1] or [-1, 1], one encoded JPEG/PNG/WEBP/BMP/GIF image per element",
        "UINT8": f"[-1, -1, -1, {c}] NHWC {pre.color_mode} pixels, H and W >= {crop}",
    }


def accepted_inputs(pre: Preprocess, dims: tuple[int, ...]) -> str:
    return "; ".join(f"{k} {v}" for k, v in input_forms(pre, dims).items())
