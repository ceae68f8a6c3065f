"""Does the fast image path answer like the reference transform? Measured on real photos.

The evaluation set is built at run time, deterministically, from the photographs
bundled with scikit-image and scikit-learn: each source is cropped (seeded box
and aspect), resized to sizes up to a 12 MP phone photo (4032x3024), saved as
JPEG at qualities 50-95, baseline or progressive, and some stored rotated with
the EXIF orientation tag that makes them upright again. Each image goes through
the fast path (DCT-scaled decode, written into the batch) and the reference
(full decode, PIL bilinear short-side resize, centre crop: torchvision's
evaluation transform) into the same ONNX model; top-1 agreement, top-5 overlap
and the largest logit difference are reported.

    python -m benchmarks.inprocess.image_eval --repository model_repository   # efficientnet_lite0
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imaging.preprocess import preprocess, reference
from modelrepo.spec import load_spec

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
    "retina.jpg",
    "camera.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
VARIANTS = 20  # per source: 11 sources -> 220 images
LONG_SIDES = (320, 640, 1024, 1600, 2448, 4032)
ASPECTS = (4 / 3, 3 / 4, 1.0, 16 / 9, 3 / 2)
# EXIF orientation -> the transpose that, applied to the upright picture, stores it so
# that a viewer honouring the tag shows it upright again.
_STORED = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class Agreement:
    images: int
    top1_agreement: float  # fraction of images whose top-1 class is the reference's
    top5_overlap: float  # mean |fast top-5 & reference top-5| / 5
    max_logit_diff: float  # largest |fast - reference| over every logit of every image
    megapixels_max: float


def sources() -> list[Path]:
    """The bundled photographs that are installed (no download)."""
    found = []
    try:
        import skimage  # late: an optional package, only its data folder is used

        data = Path(skimage.__file__).parent / "data"
        found += [data / n for n in SKIMAGE_PHOTOS if (data / n).is_file()]
    except ImportError:
        pass
    try:
        import sklearn  # late: as above

        images = Path(sklearn.__file__).parent / "datasets" / "images"
        found += [images / n for n in SKLEARN_PHOTOS if (images / n).is_file()]
    except ImportError:
        pass
    return found


@dataclass(frozen=True)
class Variant:
    """How one evaluation image is made from its source (drawn from a seeded generator)."""

    long_side: int
    aspect: float
    fraction: float  # of the source's largest box of that aspect
    position: tuple[float, float]  # where the crop box sits, 0..1 of the free room
    orientation: int  # EXIF orientation tag (1: upright, stored as is)
    quality: int
    progressive: bool


def draw_variant(rng: np.random.Generator, index: int) -> Variant:
    long_side = LONG_SIDES[index % len(LONG_SIDES)]
    aspect = 4 / 3 if long_side == 4032 else ASPECTS[int(rng.integers(len(ASPECTS)))]
    return Variant(
        long_side=long_side,
        aspect=aspect,
        fraction=float(rng.uniform(0.6, 1.0)),
        position=(float(rng.uniform()), float(rng.uniform())),
        orientation=int(rng.choice([1, 1, 3, 6, 8])),
        quality=int(rng.integers(50, 96)),
        progressive=bool(rng.integers(2)),
    )


def render(source: Image.Image, v: Variant) -> bytes:
    """The cropped, resized, JPEG-encoded (maybe EXIF-rotated) image ``v`` describes."""
    width, height = source.size
    crop_w = min(width, v.fraction * width, v.fraction * height * v.aspect)
    crop_h = crop_w / v.aspect
    left, top = v.position[0] * (width - crop_w), v.position[1] * (height - crop_h)
    size = (
        (v.long_side, round(v.long_side / v.aspect))
        if v.aspect >= 1
        else (round(v.long_side * v.aspect), v.long_side)
    )
    image = source.resize(
        size, Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h)
    )
    save: dict[str, object] = {"quality": v.quality, "progressive": v.progressive}
    if v.orientation != 1:
        image = image.transpose(_STORED[v.orientation])
        exif = Image.Exif()
        exif[0x0112] = v.orientation
        save["exif"] = exif.tobytes()
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **save)
    return buf.getvalue()


def build_set(folder: Path, every: int = 1) -> list[Path]:
    """Write the evaluation JPEGs into ``folder`` (every ``every``-th variant); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in sources():
        source = Image.open(path).convert("RGB")
        rng = np.random.default_rng(zlib.crc32(path.name.encode()))
        for index in range(VARIANTS):
            variant = draw_variant(rng, index)  # drawn always: subsets keep the same images
            if index % every == 0:
                out = folder / f"{path.stem}-{index:02d}.jpg"
                out.write_bytes(render(source, variant))
                paths.append(out)
    return paths


def evaluate(model_dir: Path, files: list[Path]) -> Agreement:
    import onnxruntime as ort  # late: heavy, and only this evaluation needs it

    spec = load_spec(model_dir)
    session = ort.InferenceSession(str(spec.model_file()), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    agree, overlap, worst, megapixels = 0, 0.0, 0.0, 0.0
    for path in files:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as probe:
            megapixels = max(megapixels, probe.size[0] * probe.size[1] / 1e6)
        batch = np.stack([preprocess(data, spec.preprocess), reference(data, spec.preprocess)])
        fast, ref = session.run([session.get_outputs()[0].name], {name: batch})[0]
        agree += int(fast.argmax() == ref.argmax())
        top = set(np.argsort(-fast)[:5]) & set(np.argsort(-ref)[:5])
        overlap += len(top) / 5
        worst = max(worst, float(np.abs(fast - ref).max()))
    n = len(files)
    return Agreement(n, agree / n, overlap / n, worst, round(megapixels, 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.inprocess.image_eval", description=__doc__
    )
    p.add_argument("--repository", type=Path, required=True, help="holds efficientnet_lite0")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--every", type=int, default=1, help="every n-th image only (a subset)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="image-eval-") as folder:
        files = build_set(Path(folder), a.every)
        if not files:
            sys.exit("no bundled photos: install scikit-image or scikit-learn")
        result = evaluate(a.repository / a.model, files)
    print(json.dumps(asdict(result), indent=2))
    if a.json:
        a.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
