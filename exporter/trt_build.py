"""ONNX -> TensorRT 10 engine (``model.plan``), built on the GPU that will run it.

The network is parsed from the exported ONNX (TensorRT 10 networks are
always explicit-batch) and gets one optimization profile: batch 1 at the
minimum, the largest preferred batch size as the shape TensorRT tunes for,
and ``max_batch_size`` at the maximum, with H/W fixed at the export size.
FP16 and INT8 are builder flags on the FP32 graph; INT8 is calibrated with an
``IInt8EntropyCalibrator2`` over the calibration images, whose cache is kept
so a rebuild skips calibration. The timing cache is persisted per TensorRT
version and GPU, so later builds on the same machine are quicker. TensorRT's
log is captured and shown when parsing or building fails.

(TensorRT 10 marks the implicit-precision flags and the calibrator API as
deprecated in favour of strongly typed networks with explicit Q/DQ, which
``exporter.quantize`` writes; TensorRT 11 removes them, hence the pin to 10.)

Only ``profile_shapes`` and the option checks run without a GPU; the rest
imports tensorrt and cuda-bindings inside the functions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.gpu import check, gpu_info
from engines.trt import capturing_logger
from exporter.precision import Precision


class TensorRTBuildError(RuntimeError):
    """Parsing or building failed; the message ends with TensorRT's own log."""


@dataclass(frozen=True)
class ProfileShapes:
    """The min / opt / max input shapes of the engine's optimization profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}


def profile_shapes(
    chw: Sequence[int], max_batch_size: int, preferred_batch_sizes: Sequence[int] = ()
) -> ProfileShapes:
    """min batch 1, opt = the largest preferred batch size (else the max), max = max_batch_size."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size {max_batch_size} must be >= 1 for a TensorRT profile")
    chw = tuple(int(d) for d in chw)
    if len(chw) != 3 or any(d < 1 for d in chw):
        raise ValueError(
            f"input dims {list(chw)}: a TensorRT engine is built at a fixed C x H x W "
            "(no -1); export at a fixed size"
        )
    bad = [b for b in preferred_batch_sizes if not 1 <= b <= max_batch_size]
    if bad:
        raise ValueError(f"preferred batch sizes {bad} lie outside the profile 1..{max_batch_size}")
    opt = max(preferred_batch_sizes) if preferred_batch_sizes else max_batch_size
    return ProfileShapes(min=(1, *chw), opt=(opt, *chw), max=(max_batch_size, *chw))


def engine_config(config: Any, chw: Sequence[int]) -> None:
    """Make a model's ModelConfig describe its engine: platform, file, fixed dims, GPU."""
    config.platform = "tensorrt_plan"
    config.default_model_filename = "model.plan"
    config.input[0].dims[:] = [int(d) for d in chw]
    for group in config.instance_group:
        group.kind = group.KIND_GPU


def calibration_batch(images: int, opt_batch: int) -> int:
    """Images per calibration step: the profile's opt batch, fewer if there are fewer images."""
    if images < 1:
        raise ValueError("INT8 calibration needs at least one image")
    return max(1, min(images, opt_batch))


def cache_path(kind: str, key: str) -> Path:
    """A file under the project cache ($CNN_SERVING_CACHE or ~/.cache/cnn-serving)/tensorrt."""
    root = os.environ.get("CNN_SERVING_CACHE") or Path.home() / ".cache" / "cnn-serving"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
    return Path(root) / "tensorrt" / f"{kind}-{safe}.bin"


def _entropy_calibrator(trt: Any, images: np.ndarray, batch: int, cache: Path) -> Any:
    """An IInt8EntropyCalibrator2 feeding ``images`` ``batch`` at a time from GPU memory."""
    from cuda.bindings import runtime as cudart

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            usable = len(images) - len(images) % batch  # whole batches only
            self.batches = [images[i : i + batch] for i in range(0, usable, batch)]
            self.nbytes = int(np.prod(self.batches[0].shape)) * 4
            self.device = check(cudart.cudaMalloc(self.nbytes), "cudaMalloc (calibration)")
            self.position = 0

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.position >= len(self.batches):
                return None
            host = np.ascontiguousarray(self.batches[self.position], dtype=np.float32)
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            check(cudart.cudaMemcpy(self.device, host.ctypes.data, host.nbytes, kind), "cudaMemcpy")
            self.position += 1
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(bytes(data))

        def free(self) -> None:
            cudart.cudaFree(self.device)

    return EntropyCalibrator()


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    precision: Precision,
    profile: ProfileShapes,
    workspace_mib: int = 4096,
    timing_cache: Path | None = None,
    calibration: np.ndarray | None = None,
    calibration_key: str = "",
) -> dict[str, Any]:
    """Build ``plan_path`` from ``onnx_path``; returns what export.json records about it."""
    import tensorrt as trt

    if precision == "int8" and (calibration is None or len(calibration) == 0):
        raise ValueError("an INT8 TensorRT engine needs calibration images")
    gpu = gpu_info()
    started = time.perf_counter()
    logger = capturing_logger(trt)
    builder = trt.Builder(logger)
    # the parser owns the parsed weights: it stays referenced until the build is done
    network, parser = _parse(trt, builder, logger, onnx_path)
    config = _builder_config(trt, builder, network, precision, profile, workspace_mib)
    calibrator = None
    calib_cache = None
    if precision == "int8":
        assert calibration is not None
        calib_cache = cache_path("calibration", calibration_key or "default")
        calibrator = _int8_calibration(
            trt, builder, network, config, profile, calibration, calib_cache
        )
    cache_file = timing_cache or cache_path(
        "timing", f"trt{trt.__version__}-sm{gpu.compute_capability}"
    )
    blob = cache_file.read_bytes() if cache_file.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(blob), False)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise TensorRTBuildError(
            f"TensorRT {trt.__version__} failed to build a {precision} engine from {onnx_path} "
            f"on {gpu.name}:\n{logger.tail()}"
        )
    plan_path.write_bytes(bytes(serialized))
    _save_timing_cache(config, cache_file)
    return {
        "version": trt.__version__,
        "gpu": gpu.to_dict(),
        "precision": precision,
        "profile": profile.to_dict(),
        "workspace_mib": workspace_mib,
        "timing_cache": str(cache_file),
        "calibration_cache": str(calib_cache) if calib_cache else None,
        "build_seconds": round(time.perf_counter() - started, 2),
        "plan_bytes": plan_path.stat().st_size,
        "builder_warnings": sum(1 for line in logger.lines if line.startswith("[WARNING]")),
    }


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """The network parsed from ``onnx_path``, and its parser (which owns the weights)."""
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"TensorRT cannot parse {onnx_path}:\n{errors}\n{logger.tail()}")
    return network, parser


def _builder_config(
    trt: Any,
    builder: Any,
    network: Any,
    precision: Precision,
    profile: ProfileShapes,
    workspace_mib: int,
) -> Any:
    """Workspace, the optimization profile and the precision flags (INT8 is added apart)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(network.get_input(0).name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 matmuls would miss the 1e-3 FP32 gate
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without int8 kernels use fp16
    return config


def _int8_calibration(
    trt: Any,
    builder: Any,
    network: Any,
    config: Any,
    profile: ProfileShapes,
    calibration: np.ndarray,
    cache: Path,
) -> Any:
    """Set the INT8 flag and calibrator on ``config``; returns the calibrator (to free)."""
    batch = calibration_batch(len(calibration), profile.opt[0])
    shape = (batch, *profile.opt[1:])
    calib_profile = builder.create_optimization_profile()
    calib_profile.set_shape(network.get_input(0).name, shape, shape, shape)
    config.set_calibration_profile(calib_profile)
    calibrator = _entropy_calibrator(trt, calibration, batch, cache)
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    return calibrator


def _save_timing_cache(config: Any, cache_file: Path) -> None:
    """Written beside ``cache_file`` and renamed over it, so no reader sees half a cache."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(tmp, cache_file)
