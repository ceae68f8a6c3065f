"""Real photographs shipped inside installed packages (no download).

Used by the demo and the tests: scikit-image's data folder and
scikit-learn's sample images. ``EXPECTED`` lists the ImageNet classes a
trained classifier should put first for each, by index: several where
ImageNet itself has near-synonyms (tabby / tiger cat / Egyptian cat).
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

EXPECTED: dict[str, set[int]] = {
    "chelsea.png": {281, 282, 285},  # a tabby cat: tabby, tiger cat, Egyptian cat
    "coffee.png": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket.jpg": {657, 744, 812},  # missile, projectile, space shuttle
    "motorcycle_left.png": {665, 670},  # moped, motor scooter
    "china.jpg": {698, 663, 442, 832},  # a temple: palace, monastery, bell cote, stupa
    "flower.jpg": {985},  # daisy
}
# Drawn by hand on the 224x224 centre crops efficientnet_lite0's preprocessing makes
# (shorter side 256, centre crop 224): (top, left, bottom, right) around the object the
# class names, for checking where explanation maps peak
# (tests/server/core/test_explain.py, test_cam.py).
BOXES: dict[str, tuple[int, int, int, int]] = {
    # the launch complex: the rocket and its two towers ("missile" leans on them: the
    # occlusion peak sits beside the rocket's nose, by the left tower, not on the rocket)
    "rocket.jpg": (40, 30, 224, 200),
    "coffee.png": (0, 40, 150, 190),  # the cup, without the saucer
    "motorcycle_left.png": (45, 0, 224, 224),  # the motorcycle, below the shelves
}
PHONE_PHOTO = "china-12mp.jpg"  # what a phone sends: 4032x3024, stored rotated + EXIF tag
PHONE_SOURCE = "china.jpg"


def photo_paths() -> dict[str, Path]:
    """Name -> path of every sample photo whose package is installed."""
    found: dict[str, Path] = {}
    try:
        import skimage

        data_dir = Path(skimage.__file__).parent / "data"
        for name in EXPECTED:
            if (data_dir / name).is_file():
                found[name] = data_dir / name
    except ImportError:
        pass
    try:
        import sklearn

        images = Path(sklearn.__file__).parent / "datasets" / "images"
        for path in sorted(images.glob("*.jpg")):
            found[path.name] = path
    except ImportError:
        pass
    return found


def phone_photo(folder: Path | None = None) -> Path | None:
    """A 12 MP JPEG made from ``china.jpg`` (cropped to 4:3, bicubic, quality 90), stored
    sideways with EXIF orientation 6 as phone cameras do; written once, then reused."""
    source = photo_paths().get(PHONE_SOURCE)
    if source is None:
        return None
    path = (folder or Path(tempfile.gettempdir()) / "cnn-serving-samples") / PHONE_PHOTO
    if not path.is_file():
        image = Image.open(source).convert("RGB")
        width, height = image.size
        crop = round(height * 4 / 3)
        left = (width - crop) // 2
        image = image.resize(
            (4032, 3024), Image.Resampling.BICUBIC, box=(left, 0, left + crop, height)
        )
        exif = Image.Exif()
        exif[0x0112] = 6  # the viewer rotates 90 degrees clockwise to show it upright
        buf = io.BytesIO()
        image.transpose(Image.Transpose.ROTATE_90).save(
            buf, "JPEG", quality=90, exif=exif.tobytes()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)
    return path


if __name__ == "__main__":
    paths = photo_paths()
    phone = phone_photo()
    if phone is not None:
        paths[PHONE_PHOTO] = phone
    if not paths:
        sys.exit("no sample photos: install scikit-image or scikit-learn")
    print(" ".join(str(p) for p in paths.values()))
