"""Hostile and unusual images through a real server: decompression bombs of every
shape refused from the header without a memory spike; every image mode, EXIF
rotation and CMYK decoded as the RGB picture they show.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image

from imaging.decode import DEFAULT_LIMITS, ImageLimitError, check_size
from imaging.preprocess import decode
from modelrepo.spec import Preprocess
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.kit.fuzz_kit import PNG, module_server, outcome, stream  # noqa: F401 (stream: a fixture)
from tests.kit.serving import ServerProcess
from tests.kit.stress import (
    bmp_bomb,
    encoded,
    image_request,
    peak_rss_mib,
    png_bomb,
    report,
    reset_peak_rss,
)

TRIED: Counter[str] = Counter()
server = module_server(TRIED)


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.url))


@pytest.mark.usefixtures("stream")  # valid requests succeed all the while
def test_decompression_bombs_are_refused_without_a_memory_spike(server, stub) -> None:
    bombs = [
        png_bomb(7100, 7100, pixels=True),  # 49 kB inflating to 50 Mpx: 150 MB as RGB
        png_bomb(20_000, 20_000),  # 400 Mpx declared: Pillow's own limit
        png_bomb(2**31 - 1, 1),
    ]
    reset_peak_rss(server.proc.pid)
    peak = peak_rss_mib(server.proc.pid)
    for bomb in bombs:
        code, message = outcome(lambda b=bomb: stub.ModelInfer(image_request([PNG, b])))
        assert code == "INVALID_ARGUMENT", (code, message)
        assert "element 1" in message and "50,000,000 pixels" in message, message
    assert peak_rss_mib(server.proc.pid) - peak < 64  # decoding the first takes ~240 MB


BOMB_SIDES = (1, 2, 7, 224, 4_000, 20_000, 65_000, 50_000_000)
BOMB_CLASSES: dict[str, Callable[[int, int], bytes | None]] = {
    "png header": png_bomb,
    "bmp header": bmp_bomb,
    "png pixels": lambda w, h: png_bomb(w, h, pixels=True) if w * h <= 4_000_000 else None,
    "jpeg pixels": lambda w, h: (
        encoded("JPEG", (w, h), quality=50) if max(w, h) <= 65_000 and w * h <= 4_000_000 else None
    ),
}


def _expected_refusal(width: int, height: int) -> str:
    """The flag a default server names for this size, or "" when the size is allowed."""
    try:
        check_size(width, height, Preprocess(), DEFAULT_LIMITS)
    except ImageLimitError as exc:
        return re.search(r"--[a-z-]+", str(exc)).group(0)
    return ""


@pytest.mark.usefixtures("stream")
@pytest.mark.parametrize("kind", BOMB_CLASSES)
def test_image_bombs_of_many_shapes(server, stub, kind: str, request) -> None:
    """Every width x height from 1 to 50 million per side: refused from the header
    naming the limit when over one (four requests at once, 3 s deadline, answered
    well inside it), decoded otherwise; peak RSS growth per class under 600 MB."""
    cases = [
        (w, h, data)
        for w in BOMB_SIDES
        for h in BOMB_SIDES
        if (data := BOMB_CLASSES[kind](w, h)) is not None
    ]
    reset_peak_rss(server.proc.pid)
    base = peak_rss_mib(server.proc.pid)
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda c: outcome(lambda: stub.ModelInfer(image_request([c[2]]), timeout=3)), cases
            )
        )
    growth = peak_rss_mib(server.proc.pid) - base
    report(request.config, f"image bombs, {kind}: {len(cases)} shapes, peak RSS +{growth:.0f} MB")
    TRIED["bomb"] += len(cases)
    for (w, h, _), (code, message) in zip(cases, answers, strict=True):
        flag = _expected_refusal(w, h)
        if flag:
            assert code == "INVALID_ARGUMENT" and flag in message, (w, h, code, message)
        elif "header" in kind:  # no pixel data: tiny sizes still decode (as zeros)
            assert code == "OK" or "cannot decode" in message, (w, h, code, message)
        else:
            assert code == "OK", (w, h, code, message)
    assert growth < 600, f"peak RSS grew {growth:.0f} MB"


def _logits(stub, elements: list[bytes]) -> np.ndarray:
    resp = stub.ModelInfer(image_request(elements), timeout=60)
    return np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(len(elements), -1)


def test_image_modes_and_exif_rotation_through_the_server(stub) -> None:
    """Every mode of the same grey picture gives the same row as its RGB PNG; an
    EXIF-rotated JPEG gives the row of the upright picture."""
    grey = np.add.outer(np.arange(48), 2 * np.arange(64)).astype(np.uint8)
    palette = Image.fromarray(grey, "P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    alpha = np.random.default_rng(0).integers(0, 256, grey.shape, dtype=np.uint8)
    variants = [
        Image.fromarray(np.stack([grey] * 3, -1)),  # the reference, RGB
        Image.fromarray(grey),  # L
        Image.fromarray(np.stack([grey, alpha], -1), "LA"),
        Image.fromarray(np.stack([grey, grey, grey, alpha], -1), "RGBA"),  # alpha ignored
        Image.fromarray(grey.astype(np.uint16) * 257),  # 16-bit greyscale
        palette,
    ]
    rows = _logits(stub, [_png(v) for v in variants])
    for mode, row in zip(["L", "LA", "RGBA", "I;16", "P"], rows[1:], strict=True):
        np.testing.assert_array_equal(row, rows[0], err_msg=mode)

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    tagged = encoded("JPEG", (64, 40), exif=exif.tobytes())
    upright = Image.open(io.BytesIO(tagged)).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    plain = Image.open(io.BytesIO(tagged)).convert("RGB")
    rotated, reference, unrotated = _logits(stub, [tagged, _png(upright), _png(plain)])
    np.testing.assert_array_equal(rotated, reference)
    assert not np.array_equal(rotated, unrotated)


def test_cmyk_jpeg_keeps_its_colours() -> None:
    """Decoded (in process, as the server does) close to the RGB it was made from."""
    rgb = np.asarray(Image.open(io.BytesIO(encoded("PNG", (64, 48)))).convert("RGB"))
    cmyk = encoded("JPEG", (64, 48), mode="CMYK", quality=95)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    decoded = np.asarray(decode(cmyk), dtype=np.int16)
    assert np.abs(decoded - rgb).mean() < 4  # inverted colours would be ~100 apart


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
