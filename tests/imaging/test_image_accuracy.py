"""The fast image path (DCT-scaled JPEG decode) answers like the reference transform
(full decode, PIL bilinear short-side resize, centre crop) with the pretrained
efficientnet_lite0, on a subset of the evaluation set built from the bundled photos.
The whole set: ``python -m benchmarks.inprocess.image_eval``."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.inprocess.image_eval import build_set, evaluate
from exporter.digits import Recipe, split, to_tensor
from imaging.decode import decode
from imaging.preprocess import preprocess, reference
from modelrepo.spec import Preprocess, load_spec
from tests.kit.stress import report


def test_evaluation_set_is_real_and_deterministic(tmp_path: Path) -> None:
    first = build_set(tmp_path / "a", every=5)
    second = build_set(tmp_path / "b", every=5)
    assert len(first) >= 40
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    sizes = [Image.open(p).size for p in first]
    assert max(w * h for w, h in sizes) >= 12_000_000  # a phone photo among them
    assert any(Image.open(p).getexif().get(0x0112, 1) != 1 for p in first)


def test_fast_path_agrees_with_the_reference(
    lite0_repo: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    files = build_set(tmp_path, every=5)
    result = evaluate(lite0_repo / "efficientnet_lite0", files)
    report(request.config, f"\nimage path vs reference, {result}")
    assert result.top1_agreement >= 0.95, result  # the whole set: >= 0.99 (docs/images.md)
    assert result.top5_overlap >= 0.9, result


def test_small_jpeg_and_png_decode_exactly_as_the_reference(photos: dict[str, Path]) -> None:
    """No DCT scaling applies below twice the resize size: the same pixels are decoded,
    and resampling only the crop moves a few of them by at most one grey level."""
    pre = Preprocess()
    one_level = 1.0 / (255.0 * min(pre.std)) + 1e-5
    for name in ("chelsea.png", "china.jpg"):
        data = photos[name].read_bytes()
        np.testing.assert_array_equal(
            np.asarray(decode(data, pre)), np.asarray(decode(data, pre, draft=False))
        )
        fast, ref = preprocess(data, pre), reference(data, pre)
        np.testing.assert_allclose(fast, ref, rtol=0, atol=one_level)
        assert np.mean(fast != ref) < 0.05, name


def test_lenet_digits_accuracy_is_unchanged_through_the_image_path(
    triton_repository: Path,
    lenet_reference: Callable[[np.ndarray], np.ndarray],
    request: pytest.FixtureRequest,
) -> None:
    """The held-out digits sent as PNG files score exactly as the tensors LeNet was
    measured on; as JPEG (quality 90, lossy) within a point of them."""
    _, x_test, _, y_test = split(Recipe())
    pre = load_spec(triton_repository / "lenet5").preprocess
    tensors = to_tensor(x_test).numpy()
    pngs = np.stack([preprocess(_encoded(d, "PNG"), pre) for d in x_test])
    jpegs = np.stack([preprocess(_encoded(d, "JPEG"), pre) for d in x_test])
    np.testing.assert_allclose(pngs, tensors, rtol=0, atol=1e-6)
    scores = {
        form: float((lenet_reference(x).argmax(1) == y_test).mean())
        for form, x in (("tensor", tensors), ("png", pngs), ("jpeg", jpegs))
    }
    report(request.config, f"\nLeNet held-out accuracy on {len(y_test)} digits: {scores}")
    assert scores["tensor"] >= 0.95
    assert scores["png"] == scores["tensor"]
    assert abs(scores["jpeg"] - scores["tensor"]) <= 0.01


def _encoded(digit: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(digit, "L").save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()
