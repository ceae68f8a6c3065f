"""Triton's CUDA shared-memory extension as a host without a GPU answers it.

Triton's shared-memory examples call the CUDA status and unregister RPCs as cleanup
before and after their work, so a server that answers them UNIMPLEMENTED breaks them
even when they only use system shared memory. Triton built without GPU support
answers both with OK and an empty result and refuses only Register; this does the
same, naming why, over gRPC and HTTP alike.

GPU hosts: registering a ``cudaIpcMemHandle_t`` needs the CUDA runtime
(``cudaIpcOpenMemHandle`` via cuda-bindings, as engines/gpu.py loads it) and an
input path that hands the device pointer to ONNX Runtime's CUDA/TensorRT providers
through IO binding. Neither exists yet: until it does, Register is refused on every
host and the extension is not listed in the server metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.core.errors import InvalidArgument, NotFound, shown


@dataclass(frozen=True)
class CudaRegion:
    """A registered CUDA region as the status RPC reports it."""

    name: str
    device_id: int
    byte_size: int


class CudaSharedMemory:
    """The CUDA shared-memory regions of one server: always none on this build."""

    def __init__(self) -> None:
        self._regions: dict[str, CudaRegion] = {}

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self.check_supported(name)

    def check_supported(self, name: str) -> None:
        """Refuse a registration for the reason Triton gives, before its handle is read."""
        raise InvalidArgument(
            f"failed to register CUDA shared memory region: {shown(name)}, GPUs not supported "
            "by this server (no CUDA IPC import path); use system shared memory "
            "(tritonclient.utils.shared_memory) or send the tensor in the request"
        )

    def unregister(self, name: str) -> None:
        """Forget ``name`` (every region when empty); an unknown name is no error, as in Triton."""
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()

    def status(self, name: str) -> list[CudaRegion]:
        if not name:
            return list(self._regions.values())
        if name not in self._regions:
            raise NotFound(f"Unable to find cuda shared memory region: {shown(name)}")
        return [self._regions[name]]
