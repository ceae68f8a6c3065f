"""Real inputs for the benchmarks: what is timed, compared, scored and calibrated on.

Every backend gets the same preprocessed images (the server's own
preprocessing, from the model's config.pbtxt), so outputs can be compared
row for row and, where the weights are real, scored:

- ImageNet models: the photographs bundled with scikit-image / scikit-learn
  whose expected classes ``exporter.samples.EXPECTED`` lists;
- LeNet-5 (digits): scikit-learn's held-out digits, split as in training.

int8 calibration uses other images than the ones scored: scikit-image's
remaining sample images (and their mirror images), or training digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.common.zoo import Subject
from exporter.samples import EXPECTED, photo_paths
from imaging.preprocess import ImageDecodeError, preprocess, preprocess_batch
from modelrepo.spec import load_spec

CALIBRATION_IMAGES = 64


@dataclass(frozen=True)
class EvalSet:
    x: np.ndarray  # float32 NCHW, preprocessed as the model's config says
    accepted: list[set[int]] | None  # per image, the class indices counted as correct
    description: str


def _spec(subject: Subject):

    return load_spec(subject.dir)


def _normalise_grey(images: np.ndarray, subject: Subject) -> np.ndarray:
    """uint8 N x H x W digits -> float32 N x 1 x H x W with the config's mean/std."""
    pre = _spec(subject).preprocess
    x = images.astype(np.float32)[:, None] / 255.0
    return ((x - pre.mean[0]) / pre.std[0]).astype(np.float32)


def _random(subject: Subject, n: int, why: str) -> EvalSet:
    x = np.random.default_rng(0).standard_normal((n, *subject.input_size), dtype=np.float32)
    return EvalSet(x, None, f"{n} seeded random tensors ({why})")


def eval_set(subject: Subject) -> EvalSet:
    """The images every backend runs for the output comparison and the measured top-1."""
    labels = subject.cfg.get("labels")
    if labels == "digits":
        from exporter.digits import Recipe, split  # torch: LeNet digits only

        _, x_test, _, y_test = split(Recipe())
        return EvalSet(
            _normalise_grey(x_test, subject),
            [{int(y)} for y in y_test],
            f"{len(y_test)} held-out scikit-learn digits",
        )
    if labels != "imagenet" or subject.input_size[0] != 3:
        return _random(subject, 8, f"no real images for label set {labels!r}")

    paths = {k: v for k, v in photo_paths().items() if k in EXPECTED}
    if not paths:
        return _random(subject, 8, "no sample photos installed: scikit-image/scikit-learn")
    x = preprocess_batch([p.read_bytes() for p in paths.values()], _spec(subject).preprocess)
    if tuple(x.shape[1:]) != subject.input_size:
        return _random(subject, 8, f"photos preprocess to {x.shape[1:]}, model takes another size")
    return EvalSet(x, [EXPECTED[k] for k in paths], f"{len(paths)} bundled photos")


def timing_input(evalset: EvalSet, batch: int) -> np.ndarray:
    """``batch`` images cycled from the eval set (contiguous, float32)."""
    idx = np.arange(batch) % len(evalset.x)
    return np.ascontiguousarray(evalset.x[idx])


def top1(logits: np.ndarray, accepted: list[set[int]]) -> float:
    """Share of images whose arg-max is one of their accepted classes."""
    pred = logits.argmax(1)
    return float(np.mean([int(p) in ok for p, ok in zip(pred, accepted, strict=True)]))


def calibration(subject: Subject, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Preprocessed real images for static int8 calibration, disjoint from the scored ones."""
    if subject.cfg.get("labels") == "digits":
        from exporter.digits import Recipe, split  # torch: LeNet digits only

        x_train = split(Recipe())[0]
        return _normalise_grey(x_train[:count], subject)
    from pathlib import Path

    import skimage

    pre = _spec(subject).preprocess
    data_dir = Path(skimage.__file__).parent / "data"
    images = []
    for path in sorted(data_dir.glob("*")):
        if path.suffix.lower() not in (".png", ".jpg") or path.name in EXPECTED:
            continue
        try:
            chw = preprocess(path.read_bytes(), pre)
        except ImageDecodeError:
            continue
        images += [chw, np.ascontiguousarray(chw[:, :, ::-1])]  # and its mirror image
    if not images:
        raise RuntimeError(f"no calibration images found in {data_dir}")
    return np.stack(images[:count]).astype(np.float32)
