"""imaging/ in process: header limits, the reduced-scale JPEG decode, the in-place write."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imaging.decode import ImageLimitError, ImageLimits, check_size, decode
from imaging.preprocess import preprocess_batch, reference
from imaging.transform import batch_buffer, resize_crop
from modelrepo.spec import Preprocess
from tests.kit.stress import encoded

PRE = Preprocess()


@pytest.mark.parametrize(
    ("size", "flag"),
    [
        ((20_000, 2), "--max-image-aspect"),
        ((50_000_000, 1), "--max-image-aspect"),
        ((8_000, 7_000), "--max-image-pixels"),
        ((5_000, 1_000), "--max-resized-pixels"),  # aspect 5, 1280x256 is fine; see limits
    ],
)
def test_limits_name_their_flag(size: tuple[int, int], flag: str) -> None:
    limits = ImageLimits(max_resized_pixels=300_000)
    with pytest.raises(ImageLimitError, match=flag):
        check_size(*size, PRE, limits)


def test_a_panorama_within_the_limits_passes() -> None:
    check_size(5_000, 1_000, PRE, ImageLimits())


def test_phone_photo_is_decoded_at_a_quarter_with_its_exif_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded("JPEG", (4032, 3024), exif=exif.tobytes())
    image = decode(data, PRE)
    assert image.size == (756, 1008)  # 1/4 scale, then rotated upright
    assert decode(data, PRE, draft=False).size == (3024, 4032)


def test_rows_are_written_in_place_as_the_float_formula_says() -> None:
    data = encoded("PNG", (300, 260))
    out = preprocess_batch([data, data], PRE)
    pixels = resize_crop(decode(data, PRE), PRE).astype(np.float32) / 255.0
    expected = ((pixels - np.float32(PRE.mean)) / np.float32(PRE.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    np.testing.assert_array_equal(out[0], out[1])
    # PNG: no DCT scaling; resampling only the crop moves a few pixels by one grey level.
    ref = reference(data, PRE)
    one_level = 1.0 / (255.0 * min(PRE.std)) + 1e-5
    np.testing.assert_allclose(out[0], ref, rtol=0, atol=one_level)
    assert np.mean(out[0] != ref) < 0.05
    assert batch_buffer(3, Preprocess(color_mode="L", mean=(0.5,), std=(0.5,))).shape[1] == 1


def test_greyscale_model_reads_one_channel() -> None:
    pre = Preprocess(color_mode="L", resize_size=32, crop_size=32, mean=(0.5,), std=(0.5,))
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(buf, "PNG")
    row = preprocess_batch([buf.getvalue()], pre)[0]
    assert row.shape == (1, 32, 32) and np.allclose(row, 1.0)
