"""Classify image files with an exported repository entry, in process.

This is the check a user runs right after ``make export``: it reads only what
the server will read (config.pbtxt, labels.txt, model.onnx), preprocesses
with the server's own code and runs ONNX Runtime, so a wrong mean/std or
label file shows up here before anything is served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imaging.preprocess import preprocess_batch
from modelrepo.spec import CONFIG_FILE, ModelSpec, load_spec


@dataclass(frozen=True)
class Prediction:
    image: str
    top: list[tuple[float, int, str]]  # (probability, class index, label)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def predict(
    repository: Path, model: str, images: list[Path], top_k: int = 5, version: int | None = None
) -> tuple[ModelSpec, list[Prediction]]:
    import onnxruntime as ort

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    model_dir = Path(repository) / model
    if not (model_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no model '{model}' in repository {repository}")
    spec = load_spec(model_dir)
    if spec.platform != "onnxruntime_onnx":
        raise ValueError(
            f"model '{model}' is a {spec.platform} model: predict runs ONNX Runtime in process; "
            "classify through the server (python -m client classify) instead"
        )
    blobs = []
    for path in images:
        try:
            blobs.append(Path(path).read_bytes())
        except OSError as exc:
            raise FileNotFoundError(f"cannot read image {path}: {exc}") from exc
    batch = preprocess_batch(blobs, spec.preprocess)
    session = ort.InferenceSession(
        str(spec.model_file(version)), providers=["CPUExecutionProvider"]
    )
    output = [spec.config.output[0].name]  # not the CAM feature map a model may also have
    logits = session.run(output, {spec.config.input[0].name: batch})[0]
    probs = softmax(logits)
    results = []
    for path, row in zip(images, probs, strict=True):
        order = np.argsort(-row)[:top_k]
        top = [(float(row[i]), int(i), spec.labels[i] if spec.labels else str(i)) for i in order]
        results.append(Prediction(image=Path(path).name, top=top))
    return spec, results
