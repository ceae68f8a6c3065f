"""ONNX Runtime backend: one InferenceSession per model instance.

Execution providers are chosen from what is installed and what the config
asks for, in the order TensorRT EP -> CUDA EP -> CPU. ONNX Runtime itself
falls back to the CPU silently when a GPU provider cannot start; we check the
providers the session actually got and refuse a KIND_GPU model that ended up
on the CPU unless CPU fallback was explicitly allowed.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from engines.base import Backend, BackendConfig, BackendError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
SHRINK_ARENA_BYTES = 16 << 20  # above a full batch of 16 images at 224x224 (9.6 MB)
_SHRINK: Any = None  # RunOptions, made once onnxruntime is imported (in load)
# Session config entries every session starts from; config.pbtxt's and the command line's
# come after and win. ONNX Runtime's pool threads spin on a core for a while after each
# parallel section by default: with a small model that burned more CPU than the request
# (the server at 168% CPU answering one client; off: 2.0x less CPU per LeNet-5 request,
# the same p50 within noise, docs/benchmarks/overhead.md). Spinning pays only on a host
# with cores to spare for a model whose compute dominates; turn it on per model there.
DEFAULT_SESSION_CONFIG = (
    ("session.intra_op.allow_spinning", "0"),
    ("session.inter_op.allow_spinning", "0"),
)


def choose_providers(config: BackendConfig, available: list[str]) -> list[str]:
    """The provider chain for ``config`` given the installed providers."""
    if config.instance_kind == "cpu":
        return [CPU]
    chain = []
    if config.use_tensorrt_ep and TENSORRT in available:
        chain.append(TENSORRT)
    if CUDA in available:
        chain.append(CUDA)
    if config.instance_kind == "gpu" and not chain and not config.allow_cpu_fallback:
        raise BackendError(
            f"{config.model_file.parent.parent.name}: instance_group kind KIND_GPU, but this "
            f"ONNX Runtime has no GPU provider (available: {available}). Install onnxruntime-gpu "
            "on a GPU machine, change the kind to KIND_CPU/KIND_AUTO, or start the server with "
            "--allow-cpu-fallback"
        )
    return [*chain, CPU]


def _load_gpu_libraries(ort: Any, tensorrt: bool) -> None:
    """Make the pip-installed CUDA/cuDNN and TensorRT libraries visible to the GPU providers.

    onnxruntime-gpu finds the nvidia-* wheels' libraries only once ``preload_dlls`` loaded
    them (torch would, but the server has none), and the TensorRT EP finds libnvinfer once
    the tensorrt module has loaded it. A failure only costs the provider, which ``load``
    then reports.
    """
    try:
        ort.preload_dlls()
    except Exception as exc:  # best effort: the session reports a provider it could not start
        log.warning("onnxruntime.preload_dlls failed: %s", exc)
    if tensorrt:
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            log.warning("TensorRT EP requested but the tensorrt package is missing: %s", exc)


class OnnxRuntimeBackend(Backend):
    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self._session: Any = None
        self._input = ""
        self._logits = ""  # outputs are fetched by name: the feature map only when asked
        self.providers: list[str] = []

    def load(self) -> None:
        import onnxruntime as ort

        if not self.config.model_file.is_file():
            raise BackendError(f"model file {self.config.model_file} does not exist")
        wanted = choose_providers(self.config, ort.get_available_providers())
        if wanted != [CPU]:
            _load_gpu_libraries(ort, TENSORRT in wanted)
        global _SHRINK
        if _SHRINK is None:
            _SHRINK = ort.RunOptions()
            _SHRINK.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.inter_op_num_threads = 1
        if self.config.intra_op_threads > 0:
            opts.intra_op_num_threads = self.config.intra_op_threads
        for key, value in self.session_config().items():
            opts.add_session_config_entry(key, value)
        try:
            session = ort.InferenceSession(str(self.config.model_file), opts, providers=wanted)
        except Exception as exc:  # corrupt file, unsupported opset, provider failure
            raise BackendError(f"cannot load {self.config.model_file}: {exc}") from exc
        outputs = [o.name for o in session.get_outputs()]
        features = self.config.features_output
        if features and features not in outputs:
            raise BackendError(
                f"{self.config.model_file}: config.pbtxt names the feature map output "
                f"'{features}', the model's outputs are {outputs}"
            )
        got = session.get_providers()
        on_gpu = any(p in got for p in (CUDA, TENSORRT))
        if self.config.instance_kind == "gpu" and not on_gpu and not self.config.allow_cpu_fallback:
            raise BackendError(
                f"{self.config.model_file}: KIND_GPU requested, ONNX Runtime could not start a "
                f"GPU provider (asked {wanted}, got {got}); use --allow-cpu-fallback to run on CPU"
            )
        self._session = session
        self._input = session.get_inputs()[0].name
        self._logits = next(name for name in outputs if name != features)
        self.providers = got
        self.ready = True
        log.info("loaded %s with providers %s", self.config.model_file, got)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._fetch([self._logits], batch)[0]

    def _run_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self._fetch([self._logits, self.config.features_output], batch)
        return logits, features

    def _fetch(self, names: list[str], batch: np.ndarray) -> list[np.ndarray]:
        # A batch far above the usual size grows ONNX Runtime's CPU arena for good (the RSS
        # floor stayed ~750 MiB up after a few 8x448x448 batches): such a run gives the
        # arena's free regions back when it ends. Usual batches keep the arena warm.
        large = batch.nbytes > SHRINK_ARENA_BYTES
        return self._session.run(names, {self._input: batch}, _SHRINK if large else None)

    def session_config(self) -> dict[str, str]:
        """The entries this session gets: the defaults, then the config's (later wins)."""
        return dict((*DEFAULT_SESSION_CONFIG, *self.config.session_config))

    def unload(self) -> None:
        self._session = None
        super().unload()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "onnxruntime",
            "providers": self.providers,
            "intra_op_threads": self.config.intra_op_threads,
            "session_config": self.session_config(),
        }
