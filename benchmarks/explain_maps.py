"""Occlusion against class activation maps on the bundled photos, for each pretrained model.

    python -m benchmarks.explain_maps --repository /tmp/cam-repo [--png docs/explain]
        [--models efficientnet_lite0,efficientnet_lite1,efficientnet_lite2]

Exports each model with its packaged ImageNet weights when the repository lacks
it, then, in process with ONNX Runtime and the server's own functions
(``server.core.explain.occlusion``, ``server.core.cam.class_maps``), computes both maps of
each photo's top class and prints a Markdown table per model: the class, Pearson r
between the two maps, whether the CAM peak lies in the hand-drawn box
(exporter/samples.py), and how much hiding a square centred on the CAM peak lowers
the class probability against hiding a random square of the same size (mean of 12,
seeded). With several models, a last table compares the architectures on the same
photo: Pearson r between their CAMs, brought to one grid. ``--png`` writes each map
laid over its crop as ``<model>_<photo>_cam.png`` and ``<model>_<photo>.png``
(occlusion).
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.explain import Explanation, overlay
from exporter.samples import BOXES, EXPECTED, photo_paths
from imaging.decode import decode
from imaging.preprocess import preprocess
from imaging.transform import resize_crop
from modelrepo.cam import CamHead, read_head
from modelrepo.spec import ModelSpec, load_spec
from server.core.cam import class_maps
from server.core.explain import ExplainRequest, occlusion
from server.core.tensors import softmax

MODELS = ("efficientnet_lite0",)
PHOTOS = ("rocket.jpg", "coffee.png", "motorcycle_left.png", "chelsea.png")
PATCH = STRIDE = 32
BOX_CROP = 224  # BOXES are drawn on a 224x224 centre crop; other crops scale them


@dataclass(frozen=True)
class Explained:
    """One exported model, run in process the way the server runs it."""

    name: str
    session: Any  # onnxruntime.InferenceSession
    spec: ModelSpec
    head: CamHead

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"input": x})[0]

    def with_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(["logits", self.head.features_output], {"input": x})
        return logits, features


def load(repository: Path, name: str = MODELS[0]) -> Explained:
    import onnxruntime as ort  # late: the serve-only install imports this module's helpers

    if not (repository / name).is_dir():
        from exporter.pipeline import ExportRequest, export_model  # late: torch

        export_model(ExportRequest(model=name, weights="pretrained", repository=repository))
    spec = load_spec(repository / name)
    head = read_head(spec.config, spec.version_dir())
    if head is None:
        raise SystemExit(f"{repository / name} has no CAM data: export it without --no-cam")
    session = ort.InferenceSession(str(spec.model_file()), providers=["CPUExecutionProvider"])
    return Explained(name, session, spec, head)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def peak(heat: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    return int(y), int(x)


def scaled_box(photo: str, crop: int) -> tuple[int, int, int, int] | None:
    """The hand-drawn box of ``photo`` on a ``crop``-sized centre crop (every model here
    crops the centre crop/(crop + 32) of the short side, so the box scales with the crop)."""
    box = BOXES.get(photo)
    return None if box is None else tuple(round(v * crop / BOX_CROP) for v in box)


def on_grid(heat: np.ndarray, size: int = BOX_CROP) -> np.ndarray:
    """``heat`` resampled to size x size, so maps of different crop sizes compare."""
    from PIL import Image  # late: only the cross-model table needs it

    return np.asarray(Image.fromarray(heat.astype(np.float32)).resize((size, size)))


def hiding_drops(
    model: Explained,
    image: np.ndarray,
    target: int,
    centre: tuple[int, int],
    patch: int,
    seed: int = 0,
) -> tuple[float, float]:
    """Drop in the class probability when a square centred on ``centre`` is hidden, and the
    mean drop over 12 random squares of the same size (grey: 0 after normalisation)."""
    _, height, width = image.shape
    y0 = min(max(centre[0] - patch // 2, 0), height - patch)
    x0 = min(max(centre[1] - patch // 2, 0), width - patch)
    rng = np.random.default_rng(seed)
    spots = [(y0, x0)] + [tuple(rng.integers(0, height - patch, 2)) for _ in range(12)]
    batch = np.repeat(image[None], len(spots) + 1, axis=0)
    for k, (sy, sx) in enumerate(spots, 1):
        batch[k, :, sy : sy + patch, sx : sx + patch] = 0.0
    probs = softmax(model.logits(batch).astype(np.float64))[:, target]
    drops = probs[0] - probs[1:]
    return float(drops[0]), float(drops[1:].mean())


def maps(model: Explained, image: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(top class, occlusion map, CAM) of one preprocessed image [3, H, W]."""
    x = image[None]
    logits, features = model.with_features(x)
    top = int(logits[0].argmax())
    cam = class_maps(model.head, features, [top], *image.shape[1:])[0]

    async def run(batch: np.ndarray) -> np.ndarray:
        return model.logits(batch)

    opts = ExplainRequest(patch=PATCH, stride=STRIDE)
    occ = asyncio.run(occlusion(run, x, logits, opts, model.spec.max_batch_size or 8))[0]
    return top, occ, cam


def _write_pngs(
    model: Explained, photo: Path, top: int, heats: dict[str, np.ndarray], out: Path
) -> None:
    crop = resize_crop(decode(photo.read_bytes(), model.spec.preprocess), model.spec.preprocess)
    for suffix, heat in heats.items():
        found = Explanation(heat=heat, top_class=top, top_label="", crop=crop)
        (out / f"{model.name}_{photo.stem}{suffix}.png").write_bytes(overlay(found))


def measure(model: Explained, photo: Path, png_dir: Path | None) -> dict[str, Any]:
    image = preprocess(photo.read_bytes(), model.spec.preprocess)
    top, occ, cam = maps(model, image)
    y, x = peak(cam)
    box = scaled_box(photo.name, image.shape[1])
    peak_drop, random_drop = hiding_drops(model, image, top, (y, x), PATCH)
    if png_dir is not None:
        _write_pngs(model, photo, top, {"_cam": cam, "": occ}, png_dir)
    return {
        "model": model.name,
        "photo": photo.name,
        "top": top,
        "label": model.spec.labels[top] if model.spec.labels else str(top),
        "expected": top in EXPECTED.get(photo.name, {top}),
        "r": pearson(occ, cam),
        "cam": cam,
        "cam_peak": (y, x),
        "occlusion_peak": peak(occ),
        "in_box": None if box is None else box[0] <= y < box[2] and box[1] <= x < box[3],
        "peak_drop": peak_drop,
        "random_drop": random_drop,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| photo | top class | r(occlusion, CAM) | CAM peak (y, x) | occlusion peak | "
        "CAM peak in box | drop hiding CAM peak | drop hiding random |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        in_box = "-" if r["in_box"] is None else ("yes" if r["in_box"] else "no")
        lines.append(
            f"| {r['photo']} | {r['top']} {r['label']} | {r['r']:.2f} | {r['cam_peak']} | "
            f"{r['occlusion_peak']} | {in_box} | {r['peak_drop']:.3f} | {r['random_drop']:.3f} |"
        )
    return "\n".join(lines)


def across_models(rows: list[dict[str, Any]]) -> str:
    """Per photo: each pair of models' CAM correlation on one 224 grid."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]
    by_key = {(r["model"], r["photo"]): r for r in rows}
    lines = [
        "| photo | " + " | ".join(f"r(CAM {a}, CAM {b})" for a, b in pairs) + " |",
        "|---|" + "---|" * len(pairs),
    ]
    for photo in dict.fromkeys(r["photo"] for r in rows):
        cells = [
            f"{pearson(on_grid(by_key[a, photo]['cam']), on_grid(by_key[b, photo]['cam'])):.2f}"
            for a, b in pairs
        ]
        lines.append(f"| {photo} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--png", type=Path, default=None, help="write the overlays into this folder")
    p.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated models with CAM data"
    )
    args = p.parse_args(argv)
    photos = photo_paths()
    rows = []
    for name in args.models.split(","):
        model = load(args.repository, name)
        mine = [measure(model, photos[photo], args.png) for photo in PHOTOS if photo in photos]
        print(f"\n{name}, occlusion patch = stride = {PATCH}, CAM from the last feature map:")
        print(table(mine))
        rows += mine
    if len(rows) > len(PHOTOS):
        print("\nThe architectures on the same photo, CAMs on one 224x224 grid:")
        print(across_models(rows))


if __name__ == "__main__":
    main()
