"""The requested outputs of ModelInfer: checked before queueing, written after computing.

Logits go out as FP32, or as Triton's classification strings when an output asks for
``classification``; either may land in a registered shared-memory region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from server.core import tensors
from server.core.errors import InvalidArgument, shown
from server.core.messages import InferRequest, OutputTensor, Parameters
from server.core.models import ServedVersion
from server.core.shared_memory import (
    PARAM_OFFSET,
    PARAM_REGION,
    PARAM_SIZE,
    SharedMemoryManager,
    ShmRef,
    shm_ref,
)

_SHM_PARAMS = (PARAM_REGION, PARAM_OFFSET, PARAM_SIZE)


@dataclass(frozen=True, slots=True)
class Wanted:
    """One output to write, its parameters read once: top-k (0: logits), shared memory."""

    name: str
    k: int = 0
    ref: ShmRef | None = None
    parameters: Parameters | None = None


def check_outputs(
    served: ServedVersion, request: InferRequest, rows: int, shm: SharedMemoryManager
) -> list[Wanted]:
    """Names, classification counts and shared-memory room, in one pass (a request may
    name thousands of outputs): bad requests cost nothing in the queue. The outputs to
    write: those named, else all of the model's (a list shared by such requests: read it)."""
    if not request.outputs:  # the common case: the model's every output, listed once
        every = served.every_output
        if not every:
            every.extend(Wanted(o.name) for o in served.spec.config.output)
        return every
    outputs = {o.name: o for o in served.spec.config.output}
    seen: set[str] = set()
    wanted = []
    for out in request.outputs:
        if out.name in seen:
            raise InvalidArgument(f"output {shown(out.name)} is requested more than once")
        seen.add(out.name)
        if out.name not in outputs:
            raise InvalidArgument(f"unknown output '{out.name}'; available: {list(outputs)}")
        k = tensors.classification_k(out.name, out.parameters)
        classes = int(np.prod(outputs[out.name].dims))
        if k > classes:
            raise InvalidArgument(f"classification count {k} exceeds the model's {classes} classes")
        ref = shm_ref(out.parameters, f"output '{out.name}'")
        if ref is not None:  # strings vary in length: only logits have a known size
            shm.check_room(ref, 0 if k else rows * classes * 4, f"output '{out.name}'")
        wanted.append(Wanted(out.name, k, ref, out.parameters))
    return wanted


def write_outputs(
    served: ServedVersion, wanted: list[Wanted], logits: np.ndarray, shm: SharedMemoryManager
) -> list[OutputTensor]:
    """Each output (checked before queueing: ``check_outputs``) as a tensor of the answer,
    or written into its region (the tensor then says where)."""
    written = []
    for out in wanted:
        if out.k:
            strings = tensors.classify(logits, out.k, served.spec.labels)
            tensor = OutputTensor(out.name, "BYTES", [logits.shape[0], out.k], strings)
        else:
            tensor = OutputTensor(out.name, "FP32", list(logits.shape), logits)
        if out.ref is not None:
            raw = tensors.raw_bytes(tensor.datatype, tensor.data)
            shm.write(out.ref, raw, f"output '{out.name}'")
            params = out.parameters or {}
            tensor.data = None
            tensor.parameters = {  # where the client reads it
                key: params[key] for key in _SHM_PARAMS if key in params
            }
        written.append(tensor)
    return written
