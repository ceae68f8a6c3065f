"""Native TensorRT backend: one deserialized engine, execution context and CUDA stream per
instance (TensorRT 10 Python API, CUDA through ``cuda-bindings``; no torch).

Device buffers are allocated once for the engine's largest profile shape
(max_batch_size); each batch sets its input shape, copies in, runs
``execute_async_v3`` on the instance's stream and copies the rows it produced
back. An engine only runs with the TensorRT version and on the GPU
architecture (compute capability) that built it, so ``load()`` compares what
export.json recorded at build time with this machine first and refuses a
mismatch with that explanation, instead of TensorRT's bare deserialization
error.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Backend, BackendConfig, BackendError
from engines.gpu import GpuUnavailable, check, gpu_info
from modelrepo.keys import EXPORT_REPORT_FILE
from modelrepo.reading import read_json

log = logging.getLogger(__name__)


def capturing_logger(trt: Any, keep: int = 400) -> Any:
    """A ``trt.ILogger`` that keeps the last ``keep`` messages (shown when a step fails)."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: deque[str] = deque(maxlen=keep)

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity))
            self.lines.append(f"[{name}] {msg}")
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT %s: %s", name, msg)

        def tail(self, n: int = 40) -> str:
            return "\n".join(list(self.lines)[-n:]) or "(TensorRT logged nothing)"

    return CapturingLogger()


def compatibility_problem(built: dict[str, Any], trt_version: str, gpu: dict[str, Any]) -> str:
    """Why an engine built as ``built`` (export.json's "tensorrt") cannot run here; "" if it can."""
    problems = []
    if built.get("version") and built["version"] != trt_version:
        problems.append(f"TensorRT {built['version']} built it, this machine has {trt_version}")
    want_cc = (built.get("gpu") or {}).get("compute_capability")
    if want_cc and want_cc != gpu.get("compute_capability"):
        problems.append(
            f"it was built on {built['gpu'].get('name')} (compute capability {want_cc}), this "
            f"machine's GPU {gpu.get('index', 0)} is {gpu.get('name')} (compute capability "
            f"{gpu.get('compute_capability')})"
        )
    if not problems:
        return ""
    return (
        "a TensorRT engine only runs with the TensorRT version and on the GPU architecture that "
        "built it: " + "; ".join(problems) + ". Rebuild it on this machine: python -m exporter "
        "export MODEL --backend tensorrt --precision P (the version folder keeps the model.onnx "
        "it was built from)"
    )


def recorded_build(plan: Path) -> dict[str, Any]:
    """export.json's "tensorrt" section beside ``plan`` ({} when absent)."""
    try:
        report = read_json(plan.parent / EXPORT_REPORT_FILE)  # bounded, regular files only
    except (OSError, ValueError):
        return {}
    return (report.get("tensorrt") or {}) if isinstance(report, dict) else {}


class TensorRTBackend(Backend):
    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self._cudart: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, int] = {}
        self._input = ""
        self._output = ""
        self._dtypes: dict[str, np.dtype] = {}
        self.max_batch = 0
        self.info: dict[str, Any] = {}

    def _check(self, result: tuple[Any, ...], what: str) -> Any:

        try:
            return check(result, what)
        except GpuUnavailable as exc:
            raise BackendError(f"{self.config.model_file}: {exc}") from exc

    def load(self) -> None:
        plan = self.config.model_file
        if not plan.is_file():
            raise BackendError(f"TensorRT engine {plan} does not exist")

        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart

            gpu = gpu_info(self.config.device_id)
        except (ImportError, GpuUnavailable) as exc:
            raise BackendError(
                f"{plan}: platform tensorrt_plan needs an NVIDIA GPU with TensorRT 10 and "
                f"cuda-bindings (pip install '.[gpu]'); here: {exc}. TensorRT engines cannot "
                "fall back to the CPU: serve the model's ONNX version instead"
            ) from exc
        self._cudart = cudart
        problem = compatibility_problem(recorded_build(plan), trt.__version__, gpu.to_dict())
        if problem:
            raise BackendError(f"{plan}: {problem}")
        try:
            self._open(trt, plan, gpu)
        except BaseException:
            self.unload()
            raise
        self.ready = True
        log.info("loaded %s on %s, max batch %d", plan, gpu.name, self.max_batch)

    def _open(self, trt: Any, plan: Path, gpu: Any) -> None:
        cudart = self._cudart
        self._check(cudart.cudaSetDevice(self.config.device_id), "cudaSetDevice")
        logger = capturing_logger(trt)
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise BackendError(
                f"TensorRT {trt.__version__} could not deserialize {plan} on {gpu.name}:\n"
                + logger.tail()
            )
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{plan}: expected one input and one output, found {names}")
        self._engine, self._input, self._output = engine, inputs[0], outputs[0]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        _, _, max_shape = engine.get_tensor_profile_shape(self._input, 0)
        self.max_batch = int(max_shape[0])
        self._context = engine.create_execution_context()
        if not self._context.set_input_shape(self._input, tuple(max_shape)):
            raise BackendError(f"{plan}: the profile's max shape {tuple(max_shape)} is rejected")
        out_shape = tuple(self._context.get_tensor_shape(self._output))
        self._stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        for name, shape in ((self._input, tuple(max_shape)), (self._output, out_shape)):
            nbytes = int(np.prod(shape)) * self._dtypes[name].itemsize
            self._buffers[name] = self._check(cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
            self._context.set_tensor_address(name, int(self._buffers[name]))
        self.info = {
            "tensorrt": trt.__version__,
            "gpu": gpu.name,
            "compute_capability": gpu.compute_capability,
            "profile_max_shape": list(max_shape),
        }

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        n = batch.shape[0]
        if not 1 <= n <= self.max_batch:
            raise BackendError(
                f"batch of {n}: this engine's profile accepts 1..{self.max_batch} images"
            )
        x = np.ascontiguousarray(batch, dtype=self._dtypes[self._input])
        if not self._context.set_input_shape(self._input, x.shape):
            raise BackendError(f"input shape {list(x.shape)} is outside the engine's profile")
        out = np.empty(
            tuple(self._context.get_tensor_shape(self._output)), self._dtypes[self._output]
        )
        h2d, d2h = (
            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
            cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
        )
        self._check(cudart.cudaSetDevice(self.config.device_id), "cudaSetDevice")
        self._check(
            cudart.cudaMemcpyAsync(
                self._buffers[self._input], x.ctypes.data, x.nbytes, h2d, self._stream
            ),
            "copy to GPU",
        )
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError(f"{self.config.model_file}: TensorRT execution failed")
        self._check(
            cudart.cudaMemcpyAsync(
                out.ctypes.data, self._buffers[self._output], out.nbytes, d2h, self._stream
            ),
            "copy from GPU",
        )
        self._check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out.astype(np.float32, copy=False)

    def unload(self) -> None:
        super().unload()
        cudart = self._cudart
        if cudart is not None:
            for ptr in self._buffers.values():
                cudart.cudaFree(ptr)
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
        self._buffers, self._stream, self._context, self._engine = {}, None, None, None

    def describe(self) -> dict[str, Any]:
        return {"backend": "tensorrt", "max_batch": self.max_batch, **self.info}
