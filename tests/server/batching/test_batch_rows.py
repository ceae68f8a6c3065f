"""Images written once: the decode pool keeps each image's uint8 crop, and the batch
worker normalises the crops of every request of a batch straight into the one float32
buffer the model reads (imaging/pixelrows.py), in single- and multi-request batches.

Real pieces throughout: the server's ImagePipeline decodes real PNGs on its pool, a
real DynamicBatcher batches them; the model is a numpy function of each row (its
mean) that keeps the array it was given, so every answer can be checked against the
same image decoded on its own, and the buffer against the rows the requests wrote.
"""

from __future__ import annotations

import asyncio
import io
import threading
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from imaging.pixelrows import PixelRows
from imaging.preprocess import preprocess
from modelrepo.spec import Preprocess
from server.batching.batcher import DynamicBatcher
from server.batching.types import rows_of
from server.core.errors import InvalidArgument
from server.core.images import ImagePipeline
from server.settings.runtime import ImageSettings
from tests.kit.batcher_kit import batching, run, until

PRE = Preprocess(resize_size=36, crop_size=32)
BAD = b"\x89PNG\r\n\x1a\n not really"


def photo(seed: int) -> bytes:
    """A noisy 48x40 PNG whose decoded mean differs from every other seed's."""
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def row_means(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).mean(axis=1, keepdims=True)


def alone(data: bytes) -> np.ndarray:
    """The model's answer for ``data`` decoded on its own (imaging's reference path)."""
    return row_means(preprocess(data, PRE)[None])


class Model:
    """Row means; keeps each batch's input itself (not a copy); the first batch is held
    until ``release``."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(x)
        if len(self.batches) == 1:
            assert self.gate.wait(20), "test never released the model"
        return row_means(x)


@dataclass
class Spec:
    name: str = "m"
    preprocess: Preprocess = PRE


@dataclass
class Served:
    """What the image pipeline reads of a served version: its spec and batcher."""

    batcher: DynamicBatcher
    spec: Spec


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every array a PixelRows was written into, in order."""
    seen: list[np.ndarray] = []
    write_into = PixelRows.write_into

    def recording(self: PixelRows, out: np.ndarray) -> None:
        seen.append(out)
        write_into(self, out)

    monkeypatch.setattr(PixelRows, "write_into", recording)
    return seen


async def _decoded(images: ImagePipeline, served: Served, data: bytes) -> PixelRows | None:
    try:
        return await images.encoded(served, "input", [data], None)  # type: ignore[arg-type]
    except InvalidArgument:
        return None


async def _one_batch(
    photos: list[bytes], raw: np.ndarray | None = None
) -> tuple[Model, DynamicBatcher, list[PixelRows | None], list[np.ndarray]]:
    """Hold the only instance busy, decode ``photos`` (one request each), queue ``raw``
    (a FP32 request) if given, then the decoded ones in reverse order, and let one batch
    form; the answers in the order of ``photos`` (then ``raw``'s)."""
    model = Model()
    batcher = DynamicBatcher(model, batching(max_batch_size=8, preferred_batch_sizes=(4,)))
    batcher.start()
    images = ImagePipeline(ImageSettings(decode_threads=2))
    served = Served(batcher, Spec())
    try:
        blocker = batcher.submit(np.zeros((1, 3, 32, 32), np.float32))
        await until(lambda: len(model.batches) == 1, "the blocker to compute")
        decoded = await asyncio.gather(*(_decoded(images, served, p) for p in photos))
        good = [d for d in decoded if d is not None]
        extra = [] if raw is None else [batcher.submit(raw)]
        waiters = [batcher.submit(d) for d in reversed(good)][::-1] + extra
        queued = len(good) + (0 if raw is None else len(raw))
        await until(lambda: batcher.queue_rows == queued, "all to queue")
        model.gate.set()
        await blocker
        answers = [await w for w in waiters]
    finally:
        batcher.close()
        images.close()
    return model, batcher, list(decoded), answers


def test_a_multi_request_image_batch_is_written_once_into_the_models_buffer(
    written: list[np.ndarray],
) -> None:
    photos = [photo(0), photo(1), BAD, photo(2), photo(3)]
    model, batcher, decoded, answers = run(_one_batch(photos))
    assert decoded[2] is None  # failed to decode: never queued
    assert all(d.crops[0].dtype == np.uint8 for d in decoded if d is not None)  # queued: uint8
    x = model.batches[1]
    assert len(model.batches) == 2 and x.shape == (4, 3, 32, 32) and x.dtype == np.float32
    assert len(written) == 4  # each request wrote its row once, into the model's input
    assert all(out.base is x for out in written)
    assert sorted(_row(x, out) for out in written) == [0, 1, 2, 3]
    assert batcher.stats().copied_batches == 0
    good = [p for p in photos if p != BAD]
    for data, answer in zip(good, answers, strict=True):
        np.testing.assert_allclose(answer, alone(data), rtol=1e-6)


def _row(x: np.ndarray, part: np.ndarray) -> int:
    """Which row of ``x`` the view ``part`` starts at."""
    offset = part.__array_interface__["data"][0] - x.__array_interface__["data"][0]
    return offset // x.strides[0]


def test_a_lone_image_request_is_written_into_the_models_buffer(
    written: list[np.ndarray],
) -> None:
    model, batcher, _, answers = run(_one_batch([photo(7)]))
    x = model.batches[1]
    assert len(written) == 1 and written[0].base is x and np.shares_memory(written[0], x)
    assert batcher.stats().copied_batches == 0
    np.testing.assert_allclose(answers[0], alone(photo(7)), rtol=1e-6)


def test_raw_fp32_and_image_requests_share_one_batch(written: list[np.ndarray]) -> None:
    raw = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model, batcher, _, answers = run(_one_batch([photo(20), photo(21)], raw))
    x = model.batches[1]
    assert x.shape == (4, 3, 32, 32)  # the raw request's two rows, then two images
    assert len(written) == 2 and sorted(_row(x, out) for out in written) == [2, 3]
    assert all(out.base is x for out in written)
    assert not np.shares_memory(x, raw) and np.array_equal(x[:2], raw)  # the one copy
    assert batcher.stats().copied_batches == 1
    for data, answer in zip([photo(20), photo(21)], answers[:2], strict=True):
        np.testing.assert_allclose(answer, alone(data), rtol=1e-6)
    np.testing.assert_allclose(answers[2], row_means(raw), rtol=1e-6)


def test_pixel_rows_stand_for_their_float_array() -> None:
    data = photo(30)
    rows = PixelRows(1, PRE)
    with pytest.raises(ValueError, match="image 0 of 1 was never decoded"):
        rows.array()
    rows.crops[0] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32)))
    assert rows.shape == (1, 3, 32, 32) and rows.dtype == np.float32 and len(rows) == 1
    assert rows_of(rows, 8, "m") == 1
    assert rows.array().dtype == np.float32 and rows.array().shape == rows.shape
    with pytest.raises(ValueError, match=r"cannot be written into \[2, 3, 32, 32\]"):
        rows.write_into(np.empty((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="leading batch dimension"):
        rows_of(object(), 8, "m")  # type: ignore[arg-type]
