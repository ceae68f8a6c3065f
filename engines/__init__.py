"""Inference backends: ``load()``, ``infer(batch) -> batch``, ``unload()``.

Heavy imports (onnxruntime, tensorrt, cuda) happen inside ``load()`` so that
every module imports on a CPU-only machine.
"""

from engines.base import Backend, BackendConfig, BackendError, create_backend

__all__ = ["Backend", "BackendConfig", "BackendError", "create_backend"]
