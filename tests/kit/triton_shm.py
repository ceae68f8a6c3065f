"""The system shared-memory part of the tritonclient session (tests/kit/triton_session.py).

Written as a Triton user would: ``tritonclient.utils.shared_memory`` creates the
POSIX regions, ``InferInput.set_shared_memory`` and
``InferRequestedOutput.set_shared_memory`` point the tensors at them. Only
tritonclient, numpy and the standard library.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

LENET = "lenet5"


def _error(call) -> dict[str, Any]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": None, "message": ""}


def shm_session(client: grpcclient.InferenceServerClient, digits: np.ndarray) -> dict[str, Any]:
    """Logits of ``digits`` through shared memory, the region status, and its errors."""
    x = np.ascontiguousarray(digits[:4], dtype=np.float32)
    out_bytes = x.shape[0] * 10 * 4
    key = f"/cnn-triton-{os.getpid()}"
    handle = shm.create_shared_memory_region("lenet_io", key, x.nbytes + out_bytes)
    out: dict[str, Any] = {}
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory("lenet_io", key, x.nbytes + out_bytes)
        out["status"] = client.get_system_shared_memory_status(as_json=True)
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_shared_memory("lenet_io", x.nbytes)
        logits = grpcclient.InferRequestedOutput("logits")
        logits.set_shared_memory("lenet_io", out_bytes, offset=x.nbytes)
        result = client.infer(LENET, [tensor], outputs=[logits])
        shape = result.get_output("logits").shape
        got = shm.get_contents_as_numpy(handle, np.float32, shape, offset=x.nbytes)
        out["logits"] = got.tolist()
        out["shape"] = list(shape)
        out["register_twice"] = _error(
            lambda: client.register_system_shared_memory("lenet_io", key, x.nbytes)
        )
        client.unregister_system_shared_memory("lenet_io")
        out["status_after_unregister"] = client.get_system_shared_memory_status(as_json=True)
        out["infer_after_unregister"] = _error(lambda: client.infer(LENET, [tensor]))
    finally:
        shm.destroy_shared_memory_region(handle)
    return out
