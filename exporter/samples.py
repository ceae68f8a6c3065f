"""Real photographs shipped inside installed packages (no download).

Used by the demo and the tests: scikit-image's data folder and
scikit-learn's sample images. ``EXPECTED`` lists the ImageNet classes a
trained classifier should put first for each, by index: several where
ImageNet itself has near-synonyms (tabby / tiger cat / Egyptian cat).
"""

from __future__ import annotations

import sys
from pathlib import Path

EXPECTED: dict[str, set[int]] = {
    "chelsea.png": {281, 282, 285},  # a tabby cat: tabby, tiger cat, Egyptian cat
    "coffee.png": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket.jpg": {657, 744, 812},  # missile, projectile, space shuttle
    "motorcycle_left.png": {665, 670},  # moped, motor scooter
    "china.jpg": {698, 663, 442, 832},  # a temple: palace, monastery, bell cote, stupa
    "flower.jpg": {985},  # daisy
}


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


if __name__ == "__main__":
    paths = photo_paths()
    if not paths:
        sys.exit("no sample photos: install scikit-image or scikit-learn")
    print(" ".join(str(p) for p in paths.values()))
