"""The backend lifecycle shared by ONNX Runtime and TensorRT (after MLServer's
``MLModel`` and Triton's python_backend): ``ready`` is set only after a
successful ``load()``, and ``infer`` returns exactly one output row per input
row."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

InstanceKind = Literal["auto", "cpu", "gpu"]


class BackendError(RuntimeError):
    """A model that cannot be loaded or run on this machine."""


@dataclass(frozen=True)
class BackendConfig:
    model_file: Path
    platform: str = "onnxruntime_onnx"
    instance_kind: InstanceKind = "auto"
    # Run a KIND_GPU model on the CPU when no GPU is usable; off by default so
    # that a GPU deployment never silently becomes a slow CPU one.
    allow_cpu_fallback: bool = False
    intra_op_threads: int = 0  # 0: the runtime's default (all cores)
    use_tensorrt_ep: bool = False  # config asks for the TensorRT execution accelerator
    # ONNX Runtime session config entries (add_session_config_entry), e.g.
    # ("session.intra_op.allow_spinning", "1"); later entries win (after the engine defaults).
    session_config: tuple[tuple[str, str], ...] = ()
    device_id: int = 0
    # The extra output holding the last feature map, for class activation maps ("": none).
    features_output: str = ""


class Backend(abc.ABC):
    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.ready = False

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model; set ``ready`` only on success."""

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray: ...

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self.ready:
            raise BackendError(f"{self.config.model_file} is not loaded")
        out = self._run(batch)
        if out.shape[0] != batch.shape[0]:
            raise BackendError(
                f"backend returned {out.shape[0]} rows for a batch of {batch.shape[0]}"
            )
        return out

    def infer_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, feature map) of one forward pass, for class activation maps."""
        if not self.ready:
            raise BackendError(f"{self.config.model_file} is not loaded")
        if not self.config.features_output:
            raise BackendError(f"{self.config.model_file} has no feature map output")
        logits, features = self._run_features(batch)
        if not logits.shape[0] == features.shape[0] == batch.shape[0]:
            raise BackendError(
                f"backend returned {logits.shape[0]} logit and {features.shape[0]} feature rows "
                f"for a batch of {batch.shape[0]}"
            )
        return logits, features

    def _run_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise BackendError(f"{type(self).__name__} serves no feature map output")

    def unload(self) -> None:
        self.ready = False

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What was loaded and where it runs (shown in logs and metadata)."""


def create_backend(config: BackendConfig) -> Backend:
    """The backend for ``config.platform``."""
    if config.platform == "onnxruntime_onnx":
        from engines.ort import OnnxRuntimeBackend  # late: the backends import this module

        return OnnxRuntimeBackend(config)
    if config.platform == "tensorrt_plan":
        from engines.trt import TensorRTBackend  # late: as above

        return TensorRTBackend(config)
    raise BackendError(
        f"platform '{config.platform}' is not supported; supported: onnxruntime_onnx, tensorrt_plan"
    )
