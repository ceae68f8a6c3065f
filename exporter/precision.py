"""What precision and runtime an export targets, and the gate a lower precision must pass.

A reduced-precision model is only written when it still classifies real
images like the FP32 model it came from: ``compare`` measures the top-1
agreement (and the relative error of the logits) on the same preprocessed
images and names every image whose top-1 changed, so a failed gate says
exactly what moved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

Precision = Literal["fp32", "fp16", "int8"]
Runtime = Literal["onnxruntime", "tensorrt"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
RUNTIMES: tuple[str, ...] = ("onnxruntime", "tensorrt")

# The gate: top-1 agreement with FP32 on real images. FP32 TensorRT must match
# exactly and stay within 1e-3 relative error (it only reorders float maths).
MIN_AGREEMENT = 0.99
FP32_MAX_REL_ERR = 1e-3


class PrecisionError(ValueError):
    """A reduced-precision model that failed its gate, or options that cannot work."""


@dataclass(frozen=True)
class PrecisionOptions:
    """The ``--precision`` / ``--backend`` half of an export request."""

    precision: Precision = "fp32"
    backend: Runtime = "onnxruntime"
    calibration: str | None = None  # a folder of JPEG/PNG images, or "samples"
    calibration_limit: int = 256  # at most this many images (evenly spread over the folder)
    min_agreement: float = MIN_AGREEMENT
    int8_full_range: bool = False  # 8-bit weights: only safe on VNNI CPUs (exporter/quantize.py)
    workspace_mib: int = 4096  # TensorRT builder workspace
    timing_cache: str | None = None  # None: one per TensorRT version and GPU in the cache dir

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision '{self.precision}': choose from {', '.join(PRECISIONS)}")
        if self.backend not in RUNTIMES:
            raise ValueError(f"backend '{self.backend}': choose from {', '.join(RUNTIMES)}")
        if self.precision == "int8" and not self.calibration:
            raise ValueError(
                "--precision int8 needs --calibration DIR: a folder of real JPEG/PNG images "
                "like those the model will serve (a few hundred is plenty), or "
                "--calibration samples for the photos bundled with scikit-image/scikit-learn"
            )
        if not 0.0 < self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement {self.min_agreement} must lie in (0, 1]")
        if self.calibration_limit < 1:
            raise ValueError(f"calibration_limit {self.calibration_limit} must be >= 1")
        if self.workspace_mib < 64:
            raise ValueError(f"workspace {self.workspace_mib} MiB is too small: at least 64")

    @property
    def is_default(self) -> bool:
        return self.precision == "fp32" and self.backend == "onnxruntime"


@dataclass(frozen=True)
class Agreement:
    """How a model's logits compare with the FP32 reference on the same images."""

    images: int
    top1_agreement: float
    max_rel_err: float  # max |got - ref| / max |ref|
    differing: list[dict[str, Any]] = field(default_factory=list)
    min_agreement: float = MIN_AGREEMENT
    max_rel_err_allowed: float | None = None
    passed: bool = True
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def compare(
    reference: np.ndarray,
    got: np.ndarray,
    names: list[str] | tuple[str, ...],
    *,
    min_agreement: float = MIN_AGREEMENT,
    max_rel_err: float | None = None,
) -> Agreement:
    """Top-1 agreement of ``got`` with ``reference`` (both N x classes), image by image."""
    if reference.shape != got.shape:
        raise PrecisionError(
            f"output shape {got.shape} differs from the reference {reference.shape}"
        )
    if len(names) != reference.shape[0]:
        raise ValueError(f"{len(names)} names for {reference.shape[0]} images")
    ref_top, got_top = reference.argmax(1), got.argmax(1)
    ref_p, got_p = _softmax(reference.astype(np.float64)), _softmax(got.astype(np.float64))
    differing = [
        {
            "image": names[i],
            "reference_class": int(ref_top[i]),
            "reference_prob": round(float(ref_p[i, ref_top[i]]), 4),
            "got_class": int(got_top[i]),
            "got_prob": round(float(got_p[i, got_top[i]]), 4),
        }
        for i in np.flatnonzero(ref_top != got_top)
    ]
    scale = float(np.abs(reference).max())
    rel_err = float(np.abs(got - reference).max()) / scale if scale > 0 else float("inf")
    agreement = float((ref_top == got_top).mean())
    reason = ""
    if agreement < min_agreement:
        shown = ", ".join(
            f"{d['image']} ({d['reference_class']} p={d['reference_prob']:.2f} -> "
            f"{d['got_class']} p={d['got_prob']:.2f})"
            for d in differing[:8]
        )
        more = f" and {len(differing) - 8} more" if len(differing) > 8 else ""
        reason = (
            f"top-1 agreement {agreement:.1%} on {len(names)} images < {min_agreement:.0%}; "
            f"top-1 changed on: {shown}{more}"
        )
    elif max_rel_err is not None and rel_err > max_rel_err:
        reason = f"max relative error {rel_err:.2e} > {max_rel_err:.0e}"
    return Agreement(
        images=len(names),
        top1_agreement=agreement,
        max_rel_err=rel_err,
        differing=differing,
        min_agreement=min_agreement,
        max_rel_err_allowed=max_rel_err,
        passed=not reason,
        reason=reason,
    )
