"""The precision stage of an export: FP32 ONNX -> INT8/FP16 ONNX or a TensorRT engine, gated.

Runs inside the export's staging folder after the FP32 ONNX passed its
parity gate against PyTorch. The lower-precision model is compared with
that FP32 ONNX (ONNX Runtime, CPU) on real images, preprocessed exactly as
config.pbtxt says: the calibration images when given, else the bundled
photos (held-out digits for digit models). If it fails its gate the export
aborts and nothing reaches the repository.

ONNX Runtime targets replace model.onnx (platform stays onnxruntime_onnx);
a TensorRT target adds model.plan beside the model.onnx it was built from,
so the engine can be rebuilt on another GPU from the same version folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import BackendConfig
from engines.trt import TensorRTBackend
from exporter import calibration as calib
from exporter.config import ModelCfg
from exporter.precision import (
    FP32_MAX_REL_ERR,
    Agreement,
    PrecisionError,
    PrecisionOptions,
    compare,
)
from exporter.quantize import convert_fp16, quantize_int8
from exporter.trt_build import build_engine, profile_shapes
from exporter.weights import file_sha256
from modelrepo.serving import ServingConfig
from modelrepo.spec import Preprocess

_INT8_METHOD = {
    "tool": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "weights": "int8, symmetric, per channel, 7-bit range (no saturation on non-VNNI CPUs)",
    "activations": "uint8, asymmetric, per tensor",
    "calibration_method": "minmax",
}


@dataclass(frozen=True)
class Optimized:
    report: dict[str, Any]  # export.json "precision" section
    tensorrt: dict[str, Any] | None = None  # export.json "tensorrt" section (engine provenance)


def ort_logits(path: Path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    """Logits of ``x`` from ONNX Runtime's CPU provider, ``batch`` images per run."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name, out = session.get_inputs()[0].name, [session.get_outputs()[0].name]  # the logits
    return np.concatenate(
        [session.run(out, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


def trt_logits(plan: Path, x: np.ndarray) -> np.ndarray:
    """Logits of ``x`` from the engine, through the server's own TensorRT backend."""

    backend = TensorRTBackend(
        BackendConfig(model_file=plan, platform="tensorrt_plan", instance_kind="gpu")
    )
    backend.load()
    try:
        step = backend.max_batch
        return np.concatenate([backend.infer(x[i : i + step]) for i in range(0, len(x), step)])
    finally:
        backend.unload()


def gate_images(opts: PrecisionOptions, pre: Preprocess, cfg: ModelCfg) -> calib.ImageSet:
    """The calibration images when given (INT8 calibrates on them too), else the defaults."""
    if opts.calibration:
        return calib.load(opts.calibration, pre, opts.calibration_limit)
    return calib.default_images(pre, cfg.labels)


def _refuse(cfg: ModelCfg, what: str, agreement: Agreement, trained: bool) -> PrecisionError:
    hint = (
        ""
        if trained
        else " (its weights are random, NOT a trained classifier: nearly flat logits make top-1 "
        "fragile; --min-agreement lowers the gate if you only want to measure speed)"
    )
    return PrecisionError(
        f"{cfg.name}: the {what} model failed its gate against FP32: {agreement.reason}"
        f"{hint}; nothing was written"
    )


def apply(
    version_dir: Path,
    onnx_path: Path,
    cfg: ModelCfg,
    pre: Preprocess,
    serving: ServingConfig,
    opts: PrecisionOptions,
    input_chw: tuple[int, int, int],
    *,
    trained: bool,
    stage: Callable[[str], None],
) -> Optimized:
    """Turn the staged FP32 ``onnx_path`` into the requested precision/backend, or raise."""
    images = gate_images(opts, pre, cfg)
    stage(f"{len(images.names)} real images for the {opts.precision} gate: {images.source}")
    reference = ort_logits(onnx_path, images.x)
    report: dict[str, Any] = {
        "precision": opts.precision,
        "backend": opts.backend,
        "reference": {"model": "fp32 ONNX", "sha256": file_sha256(onnx_path)},
        "gate_images": images.describe(),
        "calibration": images.describe() if opts.precision == "int8" else None,
    }
    if opts.backend == "onnxruntime":
        result = _onnxruntime(version_dir, onnx_path, cfg, opts, images, reference, report, trained)
    else:
        result = _tensorrt(version_dir, onnx_path, cfg, serving, opts, input_chw, images, reference,
                           report, trained, stage)  # fmt: skip
    stage(_summary(result.report["agreement"]))
    return result


def _tensorrt(
    version_dir: Path,
    onnx_path: Path,
    cfg: ModelCfg,
    serving: ServingConfig,
    opts: PrecisionOptions,
    input_chw: tuple[int, int, int],
    images: calib.ImageSet,
    reference: np.ndarray,
    report: dict[str, Any],
    trained: bool,
    stage: Callable[[str], None],
) -> Optimized:

    profile = profile_shapes(input_chw, serving.max_batch_size, serving.preferred_batch_sizes)
    plan = version_dir / "model.plan"
    built = build_engine(
        onnx_path,
        plan,
        precision=opts.precision,
        profile=profile,
        workspace_mib=opts.workspace_mib,
        timing_cache=Path(opts.timing_cache) if opts.timing_cache else None,
        calibration=images.x if opts.precision == "int8" else None,
        calibration_key=f"{cfg.name}-{report['reference']['sha256'][:12]}-{images.sha256[:12]}",
    )
    stage(
        f"TensorRT {built['version']} {opts.precision} engine on {built['gpu']['name']} in "
        f"{built['build_seconds']:.0f}s, profile {profile.to_dict()}"
    )
    strict = opts.precision == "fp32"
    agreement = compare(
        reference,
        trt_logits(plan, images.x),
        images.names,
        min_agreement=1.0 if strict else opts.min_agreement,
        max_rel_err=FP32_MAX_REL_ERR if strict else None,
    )
    if not agreement.passed:
        raise _refuse(cfg, f"TensorRT {opts.precision}", agreement, trained)
    report["agreement"] = agreement.to_dict()
    return Optimized(report, tensorrt=built)


def _onnxruntime(
    version_dir: Path,
    onnx_path: Path,
    cfg: ModelCfg,
    opts: PrecisionOptions,
    images: calib.ImageSet,
    reference: np.ndarray,
    report: dict[str, Any],
    trained: bool,
) -> Optimized:

    converted = version_dir / f".model.{opts.precision}.onnx"
    if opts.precision == "int8":
        quantize_int8(onnx_path, converted, images.x, full_range=opts.int8_full_range)
        report["method"] = dict(_INT8_METHOD)
        if opts.int8_full_range:
            report["method"]["weights"] = "int8, symmetric, per channel, full range (VNNI only)"
    elif opts.precision == "fp16":
        convert_fp16(onnx_path, converted)
        report["method"] = {"tool": "onnxruntime.transformers.float16", "io": "float32 kept"}
    else:
        raise ValueError("fp32 ONNX Runtime exports need no precision stage")
    agreement = compare(
        reference, ort_logits(converted, images.x), images.names, min_agreement=opts.min_agreement
    )
    if not agreement.passed:
        converted.unlink(missing_ok=True)
        raise _refuse(cfg, opts.precision, agreement, trained)
    report["agreement"] = agreement.to_dict()
    report["fp32_bytes"] = onnx_path.stat().st_size
    os.replace(converted, onnx_path)
    return Optimized(report)


def _summary(a: dict[str, Any]) -> str:
    differ = ", ".join(d["image"] for d in a["differing"]) or "none"
    return (
        f"gate passed: top-1 agreement {a['top1_agreement']:.1%} with FP32 on {a['images']} "
        f"images (differ: {differ}), max rel err {a['max_rel_err']:.2e}"
    )
