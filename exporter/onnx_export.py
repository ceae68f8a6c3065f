"""PyTorch -> ONNX, checked and parity-gated (after timm's ``utils/onnx.py``).

The exported graph has a dynamic batch axis, and dynamic H/W where the
architecture allows; it is checked with ``onnx.checker`` (full check),
optionally simplified with onnxslim, and then compared with PyTorch on a
seeded batch through ONNX Runtime. A failed comparison raises with the
figures; the caller decides what to clean up.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class OnnxOptions:
    opset: int = 18
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    simplify: bool = True
    parity_batch: int = 4
    max_rel_err: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ValueError(f"opset {self.opset} is too old: 17 or newer is required")
        if self.exporter not in ("dynamo", "torchscript"):
            raise ValueError(f"exporter '{self.exporter}': choose 'dynamo' or 'torchscript'")
        if self.parity_batch < 4:
            raise ValueError(f"parity_batch {self.parity_batch}: at least 4 images are compared")


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree (or the comparison would prove nothing)."""


@dataclass(frozen=True)
class ParityReport:
    batch: int
    input_shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float  # max |onnx - torch| / max |torch|
    top1_agreement: float
    output_spread: float  # how much outputs differ between images, relative
    passed: bool
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def export(
    model: nn.Module,
    path: Path,
    input_size: tuple[int, int, int],
    *,
    dynamic_hw: bool,
    options: OnnxOptions,
    min_hw: int = 32,
    outputs: tuple[str, ...] = (OUTPUT_NAME,),
) -> str:
    """Write ``model`` as ONNX to ``path`` with a dynamic batch axis; ``outputs`` names its
    outputs (logits first; a CAM export adds the feature map, exporter/cam.py).

    With ``dynamic_hw`` H and W are dynamic too, unless torch.export cannot
    prove the graph shape-generic (GoogLeNet's ceil-mode pooling, say): then
    the export is retried at the fixed size. Returns "" when the requested
    axes were exported, else the reason H/W were fixed.
    """
    sample = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(options.seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if options.exporter == "torchscript":
            axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
            maps = {0: "batch", 2: "map_height", 3: "map_width"} if dynamic_hw else {0: "batch"}
            torch.onnx.export(
                model,
                (sample,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=list(outputs),
                opset_version=options.opset,
                dynamo=False,
                dynamic_axes={
                    INPUT_NAME: axes,
                    outputs[0]: {0: "batch"},
                    **{name: maps for name in outputs[1:]},
                },
            )
            return ""
        try:
            _export_dynamo(model, sample, path, options.opset, dynamic_hw, min_hw, outputs)
            return ""
        except Exception as exc:  # torch.export's constraint solver failing
            if not dynamic_hw:
                raise
            reason = f"torch.export could not make H/W dynamic ({type(exc).__name__})"
        _export_dynamo(model, sample, path, options.opset, False, min_hw, outputs)
        return reason


def _export_dynamo(
    model: nn.Module,
    sample: torch.Tensor,
    path: Path,
    opset: int,
    dynamic_hw: bool,
    min_hw: int,
    outputs: tuple[str, ...],
) -> None:
    dims: dict[int, object] = {0: torch.export.Dim("batch", min=1, max=4096)}
    if dynamic_hw:
        dims[2] = torch.export.Dim("height", min=min_hw, max=4096)
        dims[3] = torch.export.Dim("width", min=min_hw, max=4096)
    torch.onnx.export(
        model,
        (sample,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(outputs),
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=(dims,),
        external_data=False,
        verbose=False,
    )


def check(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def simplify(path: Path) -> None:
    """Fold constants and fuse what onnxslim can, in place."""
    import contextlib
    import io

    import onnxslim

    with contextlib.redirect_stdout(io.StringIO()):  # onnxslim prints a summary table
        onnxslim.slim(str(path), str(path))


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def parity(
    model: nn.Module, path: Path, input_shape: tuple[int, ...], options: OnnxOptions
) -> ParityReport:
    """Compare ONNX Runtime with PyTorch on a seeded batch of ``input_shape``."""
    gen = torch.Generator().manual_seed(options.seed + 1)
    x = torch.randn(*input_shape, generator=gen)
    expected = model(x).float().numpy()
    got = _session(path).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise ParityError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
    scale = float(np.abs(expected).max())
    abs_err = float(np.abs(got - expected).max())
    rel_err = abs_err / scale if scale > 0 else float("inf")
    spread = float(np.abs(expected - expected[:1]).max()) / scale if scale > 0 else 0.0
    top1 = float((got.argmax(1) == expected.argmax(1)).mean())
    reason = ""
    if scale == 0 or spread < 1e-6:
        reason = "degenerate outputs: every image gets the same logits, parity would prove nothing"
    elif top1 < 1.0:
        reason = f"top-1 agreement {top1:.0%} < 100%"
    elif rel_err > options.max_rel_err:
        reason = f"max relative error {rel_err:.2e} > {options.max_rel_err:.0e}"
    return ParityReport(
        batch=int(input_shape[0]),
        input_shape=tuple(int(d) for d in input_shape),
        max_abs_err=abs_err,
        max_rel_err=rel_err,
        top1_agreement=top1,
        output_spread=spread,
        passed=not reason,
        reason=reason,
    )
