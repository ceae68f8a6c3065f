"""Which NVIDIA GPU (if any) this process can use, through the CUDA runtime bindings.

No torch: ``cuda.bindings.runtime`` (package ``cuda-bindings``, in the ``gpu``
extra) is imported inside the functions, so CPU-only machines import this
module. The exporter records ``GpuInfo`` next to every TensorRT engine, and
the server compares it before loading one, because an engine only runs on
the GPU architecture and TensorRT version that built it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class GpuUnavailable(RuntimeError):
    """No usable NVIDIA GPU, or the libraries to reach one are missing; says which."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "8.0", "9.0": what an engine is tied to
    memory_mib: int
    driver: str  # CUDA version the driver supports, e.g. "12.4"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise GpuUnavailable(
            f"the CUDA runtime bindings are not installed ({exc}); on a GPU machine run "
            "`make gpu-setup` (pip install '.[gpu]')"
        ) from exc
    return runtime


def check(result: tuple[Any, ...], what: str) -> Any:
    """Unpack a cuda-bindings ``(error, value...)`` tuple, raising on an error code."""
    cudart = _cudart()
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        detail = text.decode() if isinstance(text, bytes) else str(text)
        raise GpuUnavailable(f"{what} failed: {err.name}: {detail}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


_HINTS = {
    "cudaErrorInsufficientDriver": "no NVIDIA driver is loaded, or it is older than the CUDA "
    "runtime of the installed wheels; ",
    "cudaErrorNoDevice": "the driver sees no GPU (check CUDA_VISIBLE_DEVICES); ",
}


def _version(encoded: int) -> str:
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


def gpu_info(device: int = 0) -> GpuInfo:
    """The GPU ``device``; raises GpuUnavailable naming why there is none."""
    cudart = _cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        hint = _HINTS.get(err.name, "")
        raise GpuUnavailable(f"no usable NVIDIA GPU: {hint}CUDA says {err.name}")
    if count < 1:
        raise GpuUnavailable("no usable NVIDIA GPU: the CUDA driver reports 0 devices")
    if not 0 <= device < count:
        raise GpuUnavailable(f"GPU {device} does not exist; this machine has {count} (0..)")
    prop = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    driver = check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
    return GpuInfo(
        index=device,
        name=name.rstrip("\x00").strip(),
        compute_capability=f"{prop.major}.{prop.minor}",
        memory_mib=int(prop.totalGlobalMem) // 2**20,
        driver=_version(int(driver)),
    )


def unavailable_reason(need_tensorrt: bool = True) -> str | None:
    """None when a GPU (and TensorRT, if asked) can be used here; else the reason."""
    try:
        gpu_info()
    except GpuUnavailable as exc:
        return str(exc)
    if need_tensorrt:
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            return f"the tensorrt package is not installed ({exc}); run `make gpu-setup`"
    return None
