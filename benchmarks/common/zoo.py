"""The exported models the benchmarks run, read from a Triton-layout repository.

Exports are slow (VGG-16 takes about a minute here), so the benchmarks reuse
a repository: by default a cache of their own, ``$CNN_SERVING_CACHE/
bench-repository`` (``~/.cache/cnn-serving`` without the variable), so that
the demo's model_repository is not filled with every model of the zoo. A
model missing from it is exported once, with the model's default weights.
Nothing here imports torch unless an export is needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODELS = (
    "lenet5",
    "alexnet",
    "vgg16",
    "googlenet",
    "resnet50",
    "densenet121",
    "mobilenet_v2",
    "efficientnet_b0",
    "efficientnet_lite0",
    "convnext_tiny",
)


def cache_root() -> Path:
    """$CNN_SERVING_CACHE or ~/.cache/cnn-serving (as the exporter's checkpoint cache)."""
    root = os.environ.get("CNN_SERVING_CACHE") or Path.home() / ".cache" / "cnn-serving"
    return Path(root)


def default_repository() -> Path:
    return cache_root() / "bench-repository"


@dataclass(frozen=True)
class Subject:
    """One exported model version: its files and what export.json says about it."""

    name: str
    version: int
    dir: Path  # the model's folder (config.pbtxt, labels.txt)
    report: dict  # export.json

    @property
    def onnx(self) -> Path:
        return self.dir / str(self.version) / "model.onnx"

    def plan(self, precision: str) -> Path | None:
        """The newest native TensorRT engine built at ``precision`` (any version), if any."""
        plans = sorted(self.dir.glob("[0-9]*/model.plan"), key=lambda p: int(p.parent.name))
        for plan in reversed(plans):
            if _precision(plan.parent) == precision:
                return plan
        return None

    @property
    def input_size(self) -> tuple[int, int, int]:
        c, h, w = self.report["input"]["exported_at_size"]
        return (c, h, w)

    @property
    def cfg(self) -> dict:
        return self.report["config"]

    @property
    def trained(self) -> bool:
        return bool(self.report["weights"].get("trained"))

    def facts(self) -> dict:
        """The per-model columns of every result row."""
        return {
            "model": self.name,
            "family": self.cfg.get("family"),
            "year": self.cfg.get("year"),
            "params": self.report["params"],
            "gmacs": self.report["gmacs"],
            "input": "x".join(str(d) for d in self.input_size),
            "weights": self.report["weights"]["kind"],
            "trained": self.trained,
            "published_top1": self.cfg.get("published_top1"),
            "onnx_mb": round(self.onnx.stat().st_size / 2**20, 2),
        }


def _precision(version_dir: Path) -> str:
    """export.json's precision (a section since INT8/FP16 exports; absent means fp32)."""
    try:
        precision = json.loads((version_dir / "export.json").read_text()).get("precision")
    except (OSError, ValueError):
        return "unknown"
    if isinstance(precision, dict):
        precision = precision.get("precision")
    return precision or "fp32"


def _fp32_onnx(version_dir: Path) -> bool:
    """An FP32 ONNX export (reduced-precision versions are derived by the benchmark itself)."""
    return (version_dir / "model.onnx").is_file() and _precision(version_dir) == "fp32"


def _versions(model_dir: Path) -> list[int]:
    return sorted(
        int(p.name) for p in model_dir.glob("[0-9]*") if p.name.isdigit() and _fp32_onnx(p)
    )


def ensure_exported(
    name: str, repository: Path, log: Callable[[str], None] = lambda _: None
) -> Subject:
    """The newest FP32 ONNX version of ``name`` in ``repository``, exporting it if absent.

    A name already exported is read without importing the exporter (nor torch);
    aliases and unknown names go through the registry, which names the known ones.
    """
    model_dir = Path(repository) / name
    if not _versions(model_dir):
        from exporter.registry import resolve_name  # torch; raises with the known names

        name = resolve_name(name)
        model_dir = Path(repository) / name
    if not _versions(model_dir):
        from exporter.pipeline import ExportRequest, export_model  # torch: only to export

        log(f"exporting {name} into {repository} (once; later runs reuse it)")
        export_model(ExportRequest(model=name, repository=Path(repository)), progress=log)
    version = _versions(model_dir)[-1]
    report = json.loads((model_dir / str(version) / "export.json").read_text())
    return Subject(name=name, version=version, dir=model_dir, report=report)
