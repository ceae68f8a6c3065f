"""Lower-precision copies of an exported ONNX model: static INT8 (QDQ) and FP16.

INT8 is ONNX Runtime's static post-training quantization: the graph is first
prepared with ``quant_pre_process`` (shape inference and the optimizations
quantization expects), activation ranges are calibrated on real preprocessed
images, and the result is written in QDQ format (QuantizeLinear /
DequantizeLinear pairs around float ops) with per-channel INT8 weights, which
ONNX Runtime's CPU provider fuses into integer kernels and TensorRT reads as
explicit quantization. Activations are unsigned and asymmetric by default
(U8S8, ONNX Runtime's recommended format on x86 CPUs); TensorRT needs signed,
symmetric activations, which ``symmetric_activations=True`` gives.

Weights use 7 of their 8 bits by default (``reduce_range``). x86 CPUs without
VNNI (AVX2, and AVX-512 before Cascade Lake) multiply UINT8 by INT8 with an
instruction that sums pairs into a saturating 16-bit register: full-range
weights overflow it, and the same file then answers differently there than on a
VNNI CPU. Measured on the pretrained efficientnet_lite0 under QEMU emulating a
Haswell: full range changed chelsea.png's top-1 (282 -> 285, max rel err 0.29)
where 7-bit weights kept all six photos (0.086; 0.057 full range on VNNI).
``full_range=True`` is for files that only ever run on VNNI CPUs or GPUs.

FP16 uses ONNX Runtime's own float16 converter (``onnxruntime.transformers.
float16``, shipped inside the pinned onnxruntime package: no extra
dependency) with ``keep_io_types=True``: the graph computes in FP16 but its
input and output stay FP32, so clients and config.pbtxt are unchanged.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

CalibrationMethod = Literal["minmax", "percentile"]


def _reader_base() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


def array_reader(input_name: str, data: np.ndarray, batch_size: int = 8) -> Any:
    """An ONNX Runtime ``CalibrationDataReader`` over a preprocessed NCHW batch."""

    class ArrayReader(_reader_base()):
        """Feeds ``data`` to the calibrator ``batch_size`` images at a time."""

        def __init__(self) -> None:
            self.batches = [
                {input_name: np.ascontiguousarray(data[i : i + batch_size], dtype=np.float32)}
                for i in range(0, len(data), batch_size)
            ]
            self.position = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= len(self.batches):
                return None
            self.position += 1
            return self.batches[self.position - 1]

        def rewind(self) -> None:
            self.position = 0

    return ArrayReader()


def _input_of(onnx_path: Path) -> tuple[str, list[int | str]]:
    """The model's (single) input name and dims (ints, or names where dynamic)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path}: expected one input, found {[i.name for i in inputs]}")
    dims = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in inputs[0].type.tensor_type.shape.dim
    ]
    return inputs[0].name, dims


def check_calibration(calibration: np.ndarray, dims: list[int | str], onnx_path: Path) -> None:
    """Calibration data must be a non-empty float NCHW batch the model accepts."""
    if not isinstance(calibration, np.ndarray) or calibration.ndim != 4:
        got = getattr(calibration, "shape", type(calibration).__name__)
        raise ValueError(f"calibration must be an N x C x H x W numpy array, got {got}")
    if calibration.shape[0] < 1:
        raise ValueError("calibration holds no images: at least one is needed")
    if not np.issubdtype(calibration.dtype, np.floating):
        raise ValueError(
            f"calibration must be float32 preprocessed images, got dtype {calibration.dtype}"
        )
    for axis, (want, got) in enumerate(zip(dims[1:], calibration.shape[1:], strict=False), 1):
        if isinstance(want, int) and want > 0 and want != got:
            raise ValueError(
                f"calibration shape {list(calibration.shape)} does not fit {onnx_path.name}'s "
                f"input {dims} (axis {axis}: {got} != {want})"
            )


def quantize_int8(
    onnx_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    *,
    method: CalibrationMethod = "minmax",
    symmetric_activations: bool = False,
    full_range: bool = False,
) -> Path:
    """Write a static INT8 QDQ copy of ``onnx_path`` calibrated on ``calibration``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method '{method}': choose from {', '.join(methods)}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    input_name, dims = _input_of(onnx_path)
    check_calibration(calibration, dims, onnx_path)
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 8  # fixed batch: honour it
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared))
        quantize_static(
            str(prepared),
            str(out_path),
            array_reader(input_name, calibration, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            reduce_range=not full_range,
            extra_options={"ActivationSymmetric": symmetric_activations},
        )
    return out_path


def convert_fp16(onnx_path: Path, out_path: Path) -> Path:
    """Write an FP16 copy of ``onnx_path`` whose input and output stay FP32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    onnx.save(model, str(out_path))
    return Path(out_path)
