"""Occlusion against class activation maps on the bundled photos (pretrained efficientnet_lite0).

    python -m benchmarks.explain_maps --repository /tmp/cam-repo [--png docs/explain]

Exports efficientnet_lite0 with its packaged ImageNet weights when the repository
lacks it, then, in process with ONNX Runtime and the server's own functions
(``server.explain.occlusion``, ``server.cam.class_maps``), computes both maps of
each photo's top class and prints a Markdown table: the class, Pearson r between
the two maps, whether the CAM peak lies in the hand-drawn box (exporter/samples.py),
and how much hiding a square centred on the CAM peak lowers the class probability
against hiding a random square of the same size (mean of 12, seeded). ``--png``
writes each CAM laid over its crop as ``efficientnet_lite0_<photo>_cam.png``.
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
from server.cam import class_maps
from server.explain import ExplainOptions, occlusion
from server.tensors import softmax

MODEL = "efficientnet_lite0"
PHOTOS = ("rocket.jpg", "coffee.png", "motorcycle_left.png", "chelsea.png")
PATCH = STRIDE = 32


@dataclass(frozen=True)
class Lite0:
    session: Any  # onnxruntime.InferenceSession
    spec: ModelSpec
    head: CamHead

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"input": x})[0]

    def with_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(["logits", self.head.features_output], {"input": x})
        return logits, features


def load(repository: Path) -> Lite0:
    import onnxruntime as ort  # late: the serve-only install imports this module's helpers

    if not (repository / MODEL).is_dir():
        from exporter.pipeline import ExportRequest, export_model  # late: torch

        export_model(ExportRequest(model=MODEL, weights="pretrained", repository=repository))
    spec = load_spec(repository / MODEL)
    head = read_head(spec.config, spec.version_dir())
    if head is None:
        raise SystemExit(f"{repository / MODEL} has no CAM data: export it without --no-cam")
    session = ort.InferenceSession(str(spec.model_file()), providers=["CPUExecutionProvider"])
    return Lite0(session, spec, head)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def peak(heat: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    return int(y), int(x)


def hiding_drops(
    model: Lite0, image: np.ndarray, target: int, centre: tuple[int, int], patch: int, seed: int = 0
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


def maps(model: Lite0, image: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(top class, occlusion map, CAM) of one preprocessed image [3, H, W]."""
    x = image[None]
    logits, features = model.with_features(x)
    top = int(logits[0].argmax())
    cam = class_maps(model.head, features, [top], *image.shape[1:])[0]

    async def run(batch: np.ndarray) -> np.ndarray:
        return model.logits(batch)

    opts = ExplainOptions(patch=PATCH, stride=STRIDE)
    occ = asyncio.run(occlusion(run, x, logits, opts, model.spec.max_batch_size or 8))[0]
    return top, occ, cam


def measure(model: Lite0, photo: Path, png_dir: Path | None) -> dict[str, Any]:
    data = photo.read_bytes()
    image = preprocess(data, model.spec.preprocess)
    top, occ, cam = maps(model, image)
    y, x = peak(cam)
    box = BOXES.get(photo.name)
    peak_drop, random_drop = hiding_drops(model, image, top, (y, x), PATCH)
    if png_dir is not None:
        crop = resize_crop(decode(data, model.spec.preprocess), model.spec.preprocess)
        found = Explanation(heat=cam, top_class=top, top_label="", crop=crop)
        (png_dir / f"{MODEL}_{photo.stem}_cam.png").write_bytes(overlay(found))
    return {
        "photo": photo.name,
        "top": top,
        "label": model.spec.labels[top] if model.spec.labels else str(top),
        "expected": top in EXPECTED.get(photo.name, {top}),
        "r": pearson(occ, cam),
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--png", type=Path, default=None, help="write CAM overlays into this folder")
    args = p.parse_args(argv)
    model = load(args.repository)
    photos = photo_paths()
    rows = [measure(model, photos[name], args.png) for name in PHOTOS if name in photos]
    print(f"{MODEL}, occlusion patch = stride = {PATCH}, CAM from the last feature map:")
    print(table(rows))


if __name__ == "__main__":
    main()
