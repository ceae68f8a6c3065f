"""The requested outputs of ModelInfer: checked before queueing, written after computing.

Logits go out as FP32, or as Triton's classification strings when an output asks for
``classification``; either may land in a registered shared-memory region.
"""

from __future__ import annotations

import numpy as np

from protos import grpc_service_pb2 as pb
from server.core import tensors
from server.core.errors import InvalidArgument, shown
from server.core.models import ServedVersion
from server.core.shared_memory import (
    PARAM_OFFSET,
    PARAM_REGION,
    PARAM_SIZE,
    SharedMemoryManager,
    shm_ref,
)


def check_outputs(
    served: ServedVersion, request: pb.ModelInferRequest, rows: int, shm: SharedMemoryManager
) -> None:
    """Names, classification counts and shared-memory room, in one pass (a request may
    name thousands of outputs): bad requests cost nothing in the queue."""
    outputs = {o.name: o for o in served.spec.config.output}
    seen: set[str] = set()
    for out in request.outputs:
        if out.name in seen:
            raise InvalidArgument(f"output {shown(out.name)} is requested more than once")
        seen.add(out.name)
        if out.name not in outputs:
            raise InvalidArgument(f"unknown output '{out.name}'; available: {list(outputs)}")
        k = tensors.classification_k(out)
        classes = int(np.prod(outputs[out.name].dims))
        if k > classes:
            raise InvalidArgument(f"classification count {k} exceeds the model's {classes} classes")
        ref = shm_ref(out.parameters, f"output '{out.name}'")
        if ref is not None:  # strings vary in length: only logits have a known size
            shm.check_room(ref, 0 if k else rows * classes * 4, f"output '{out.name}'")


def write_outputs(
    served: ServedVersion,
    request: pb.ModelInferRequest,
    logits: np.ndarray,
    response: pb.ModelInferResponse,
    shm: SharedMemoryManager,
) -> None:
    """Each requested output (all when none is named) into ``response`` or its region."""
    available = [o.name for o in served.spec.config.output]
    requested = list(request.outputs) or [
        pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in available
    ]
    for out in requested:  # names and k checked before queueing (check_outputs)
        k = tensors.classification_k(out)
        tensor = response.outputs.add(name=out.name)
        if k:
            strings = tensors.classify(logits, k, served.spec.labels)
            tensor.datatype, tensor.shape[:] = "BYTES", [logits.shape[0], k]
            data = tensors.serialize_bytes_elements(strings)
        else:
            tensor.datatype, tensor.shape[:] = "FP32", list(logits.shape)
            data = np.ascontiguousarray(logits, dtype="<f4").tobytes()
        ref = shm_ref(out.parameters, f"output '{out.name}'")
        if ref is None:
            response.raw_output_contents.append(data)
            continue
        shm.write(ref, data, f"output '{out.name}'")
        for key in (PARAM_REGION, PARAM_OFFSET, PARAM_SIZE):  # where the client reads it
            if key in out.parameters:
                tensor.parameters[key].CopyFrom(out.parameters[key])
        response.raw_output_contents.append(b"")  # keeps raw contents positional
