"""Images written once: a batch of several image requests runs on the rows their images
were decoded into (server/batching/rows.py), and falls back to copying when it cannot.

Real pieces throughout: the server's ImagePipeline decodes real PNGs on its pool into
the model's row arena, a real DynamicBatcher batches them; the model is a numpy
function of each row (its mean), so every answer can be checked against the same
image decoded on its own.
"""

from __future__ import annotations

import asyncio
import io
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from imaging.preprocess import preprocess
from modelrepo.spec import Preprocess
from server.batching.batcher import DynamicBatcher
from server.batching.rows import RowArena, joined
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
    """What the image pipeline reads of a served version: its spec, batcher and rows."""

    batcher: DynamicBatcher
    spec: Spec = field(default_factory=Spec)
    rows: RowArena = field(init=False)

    def __post_init__(self) -> None:
        self.rows = RowArena(self.batcher.config.max_batch_size)


async def _decoded(images: ImagePipeline, served: Served, data: bytes) -> np.ndarray | None:
    try:
        return await images.encoded(served, "input", [data], None)  # type: ignore[arg-type]
    except InvalidArgument:
        return None


async def _one_batch(photos: list[bytes]) -> tuple[Model, DynamicBatcher, list, list]:
    """Hold the only instance busy, decode ``photos`` (one request each) into the arena,
    queue the decoded ones in reverse order of their rows, then let one batch form."""
    model = Model()
    batcher = DynamicBatcher(model, batching(max_batch_size=8, preferred_batch_sizes=(4,)))
    batcher.start()
    images = ImagePipeline(ImageSettings(decode_threads=2))
    served = Served(batcher)
    try:
        blocker = batcher.submit(np.zeros((1, 3, 32, 32), np.float32))
        await until(lambda: len(model.batches) == 1, "the blocker to compute")
        arrays = await asyncio.gather(*(_decoded(images, served, p) for p in photos))
        good = [a for a in arrays if a is not None]
        waiters = [batcher.submit(a) for a in reversed(good)][::-1]
        await until(lambda: batcher.queue_rows == len(good), "the images to queue")
        model.gate.set()
        await blocker
        answers = [await w for w in waiters]
    finally:
        batcher.close()
        images.close()
    return model, batcher, list(arrays), answers


def test_a_multi_request_image_batch_runs_on_the_rows_it_was_decoded_into() -> None:
    photos = [photo(seed) for seed in range(4)]
    model, batcher, arrays, answers = run(_one_batch(photos))
    x = model.batches[1]
    assert len(model.batches) == 2 and len(x) == 4  # the blocker, then one batch of four
    assert not x.flags.owndata and x.base is arrays[0].base  # the arena's slab itself
    assert all(np.shares_memory(x, a) for a in arrays)
    assert batcher.stats().copied_batches == 0
    for data, answer in zip(photos, answers, strict=True):
        want = row_means(preprocess(data, PRE)[None])
        np.testing.assert_allclose(answer, want, rtol=1e-6)


def test_a_gap_left_by_a_failed_decode_falls_back_to_one_copy() -> None:
    photos = [photo(10), BAD, photo(11), photo(12)]
    model, batcher, arrays, answers = run(_one_batch(photos))
    assert arrays[1] is None  # its rows stay unwritten and unused
    x = model.batches[1]
    assert len(x) == 3 and x.flags.owndata  # rows 0, 2, 3: copied into a new array
    assert batcher.stats().copied_batches == 1
    for data, answer in zip([photos[0], *photos[2:]], answers, strict=True):
        np.testing.assert_allclose(answer, row_means(preprocess(data, PRE)[None]), rtol=1e-6)


@dataclass
class Req:
    inputs: np.ndarray


def test_joined_takes_consecutive_rows_of_one_buffer_in_any_order() -> None:
    arena = RowArena(8)
    a, b, c = (arena.reserve(n, (2, 2), np.float32) for n in (1, 2, 1))
    view, order = joined([Req(c), Req(a), Req(b)]) or (None, None)
    assert view is not None and view.base is a.base and len(view) == 4
    assert order == [1, 2, 0]  # a, b, c: the rows' order
    assert joined([Req(a), Req(c)]) is None  # b's rows are missing
    assert joined([Req(a), Req(a)]) is None  # the same rows twice
    assert joined([Req(a), Req(np.zeros((1, 2, 2), np.float32))]) is None
    assert joined([Req(np.frombuffer(bytes(32), np.float32).reshape(2, 2, 2))] * 2) is None


def test_a_slab_is_never_handed_out_twice() -> None:
    arena = RowArena(4)
    first = [arena.reserve(n, (3,), np.float32) for n in (3, 2, 1)]  # 2 do not fit: new slab
    assert first[0].base is not first[1].base and first[1].base is first[2].base
    assert not any(np.shares_memory(p, q) for i, p in enumerate(first) for q in first[i + 1 :])
    assert arena.reserve(5, (3,), np.float32).base is None  # over a slab: its own buffer
    with pytest.raises(ValueError, match="at least one row"):
        RowArena(0)
