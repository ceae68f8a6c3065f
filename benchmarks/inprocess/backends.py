"""In-process runners: one callable ``x -> logits`` per backend and precision.

A combination this machine cannot run raises ``Skipped`` with the reason
(no GPU, provider not installed, no engine, precision not meaningful for the
backend); the benchmark turns it into a "skipped" row, so nothing is dropped
silently. Heavy imports (torch, onnxruntime, tensorrt) happen inside
``open_runner``. Thread counts are pinned here: PyTorch's intra-op pool and
ONNX Runtime's ``intra_op_num_threads`` get the same number, inter-op 1 (as
the server's backend). Idle threads sleep instead of spinning unless ``spin``
(ONNX Runtime's ``allow_spinning``; PyTorch's OpenMP follows OMP_WAIT_POLICY,
which latency.py sets before torch loads): on a shared 2-core machine a
spinning pool starves its own descheduled threads and the figures collapse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common.machine import gpu_reason
from benchmarks.common.zoo import Subject, cache_root
from engines import BackendConfig, BackendError, create_backend
from exporter import quantize

BACKENDS = ("torch", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
GPU_BACKENDS = ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")

# Which precisions each backend measures, and why not the others.
UNSUPPORTED = {
    ("torch", "fp16"): "PyTorch eager is the fp32 baseline; fp16 is measured on the GPU backends",
    ("torch", "int8"): "int8 is measured as a static QDQ ONNX model on ONNX Runtime",
    ("onnxruntime", "fp16"): "fp16 runs only on GPU execution providers (ONNX Runtime's CPU "
    "provider has no fast fp16 kernels)",
    ("onnxruntime-cuda", "int8"): "int8 QDQ models are measured on ONNX Runtime CPU and the "
    "TensorRT EP (the CUDA EP runs them largely dequantized)",
}


class Skipped(Exception):
    """A backend/precision this machine cannot measure; the message says why."""


@dataclass
class Runner:
    backend: str
    precision: str
    run: Callable[[np.ndarray], np.ndarray]
    model_mb: float | None  # the file the backend loads (PyTorch: its state_dict)
    detail: str = ""  # providers / device actually used
    close: Callable[[], None] = field(default=lambda: None)


def precision_file(subject: Subject, precision: str, make: Callable[[Path, Path], Path]) -> Path:
    """A converted copy of model.onnx, cached by the fp32 file's sha256 (made once)."""
    sha = subject.report["onnx"]["sha256"][:12]
    out = cache_root() / "bench-precision" / f"{subject.name}-{sha}" / f"model.{precision}.onnx"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.onnx")
        make(subject.onnx, tmp)
        tmp.replace(out)
    return out


def _quantize(subject: Subject, precision: str, calibrate: Callable[[], np.ndarray]) -> Path:
    if precision == "fp32":
        return subject.onnx
    if precision == "int8":
        return precision_file(
            subject, "int8", lambda src, dst: quantize.quantize_int8(src, dst, calibrate())
        )
    return precision_file(subject, "fp16", quantize.convert_fp16)


def _torch(subject: Subject, threads: int) -> Runner:
    import torch  # the baseline only: every other backend runs without torch

    from exporter.weights import load_with_weights  # imports torch

    torch.set_num_threads(threads)
    weights = subject.report["weights"]
    spec = weights["file"] if weights["kind"] == "file" else weights["kind"]
    model, _ = load_with_weights(
        subject.name, spec, seed=weights.get("seed") or 0, input_size=subject.input_size
    )
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return Runner("torch", "fp32", run, state_bytes / 2**20, f"{torch.get_num_threads()} threads")


def _ort_providers(backend: str, precision: str) -> list:
    import onnxruntime as ort

    wanted = {"onnxruntime-cuda": "CUDAExecutionProvider"}.get(backend, "TensorrtExecutionProvider")
    if backend == "onnxruntime":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if wanted not in available:
        raise Skipped(
            f"onnxruntime {ort.__version__} has no {wanted} (available: {', '.join(available)}); "
            "install onnxruntime-gpu (pip install .[gpu]) on a machine with an NVIDIA GPU"
        )
    if (why := gpu_reason()) is not None:
        raise Skipped(why)
    if backend == "onnxruntime-cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_options = {
        "trt_fp16_enable": precision == "fp16",
        "trt_int8_enable": precision == "int8",  # the QDQ model carries its own scales
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_root() / "bench-trt-ep"),
    }
    return [("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider"]


def _ort(
    subject: Subject,
    backend: str,
    precision: str,
    threads: int,
    calibrate: Callable[[], np.ndarray],
    spin: bool = False,
) -> Runner:
    import onnxruntime as ort

    providers = _ort_providers(backend, precision)
    # fp16 on the TensorRT EP is a builder flag on the fp32 graph; the CUDA EP needs fp16 weights.
    path = subject.onnx if backend == "onnxruntime-tensorrt" and precision == "fp16" else None
    path = path or _quantize(subject, precision, calibrate)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    session = ort.InferenceSession(str(path), opts, providers=providers)
    got = session.get_providers()
    if backend != "onnxruntime" and got[0] == "CPUExecutionProvider":
        raise Skipped(f"ONNX Runtime could not start {providers[0]} (got {got})")
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    logits = [session.get_outputs()[0].name]  # only: a CAM export has a feature map too

    def run(x: np.ndarray) -> np.ndarray:
        out = session.run(logits, {inp.name: x.astype(dtype, copy=False)})[0]
        return out.astype(np.float32, copy=False)

    return Runner(backend, precision, run, path.stat().st_size / 2**20, ",".join(got))


def _tensorrt(subject: Subject, precision: str) -> Runner:
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        raise Skipped(
            "the tensorrt Python package is not installed (pip install .[gpu] on a GPU machine)"
        ) from exc
    if (why := gpu_reason()) is not None:
        raise Skipped(why)
    plan = subject.plan(precision)
    if plan is None:
        raise Skipped(
            f"no {precision} TensorRT engine (model.plan) in {subject.dir}: build one with "
            f"`make export MODEL={subject.name} BACKEND=tensorrt PRECISION={precision}`"
        )

    try:
        backend = create_backend(
            BackendConfig(model_file=plan, platform="tensorrt_plan", instance_kind="gpu")
        )
        backend.load()
    except (BackendError, ImportError) as exc:
        raise Skipped(f"cannot run {plan}: {exc}") from exc
    return Runner(
        "tensorrt",
        precision,
        backend.infer,
        plan.stat().st_size / 2**20,
        str(backend.describe()),
        backend.unload,
    )


def skip_reason(backend: str, precision: str) -> str | None:
    """Why a combination is never measured (before trying to load anything)."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}"
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}"
    return UNSUPPORTED.get((backend, precision))


def prepare(
    subject: Subject, backend: str, precision: str, calibrate: Callable[[], np.ndarray]
) -> None:
    """Make (and cache) the converted model file first, so that its cost stays out of
    the runner's peak memory; raises Skipped like ``open_runner``."""
    if skip_reason(backend, precision) is None and backend.startswith("onnxruntime"):
        _ort_providers(backend, precision)  # not installed / no GPU: skip before converting
        if not (backend == "onnxruntime-tensorrt" and precision == "fp16"):
            _quantize(subject, precision, calibrate)


def open_runner(
    subject: Subject,
    backend: str,
    precision: str,
    threads: int,
    calibrate: Callable[[], np.ndarray],
    spin: bool = False,
) -> Runner:
    """Load ``subject`` on ``backend`` at ``precision``; raises Skipped with the reason."""
    if (why := skip_reason(backend, precision)) is not None:
        raise Skipped(why)
    if backend == "torch":
        return _torch(subject, threads)
    if backend == "tensorrt":
        return _tensorrt(subject, precision)
    return _ort(subject, backend, precision, threads, calibrate, spin)
