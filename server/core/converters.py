"""KServe protobuf <-> the data plane's request and answer (``server/core/messages.py``).

Two edges receive protobuf: the gRPC frontend and the cluster's replicas (Ray's
gRPC proxy hands them the message). Frontends may not import each other, so the
translation both need lives here, in the core they share (MLServer keeps its
``grpc/converters.py`` beside its servicers for the same role).

Per-request cost is a budget (issue 28): raw contents pass by reference (the data
plane reads them with ``np.frombuffer``), and an answer's bytes are written once,
straight into the protobuf message. Nothing here checks a tensor against a model:
the data plane does, in its own order, so every request fails as it always did.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from protos import grpc_service_pb2 as pb
from server.core import request_caps, tensors
from server.core.messages import (
    InferRequest,
    InferResponse,
    InputTensor,
    Parameter,
    Parameters,
    RequestedOutput,
)
from server.settings.limits import RequestLimits

# Which typed ``contents`` field holds a datatype's values (KServe v2's table).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_INT64_MAX = (1 << 63) - 1


def _parameters(params: Mapping[str, pb.InferParameter]) -> Parameters:
    if not params:
        return {}
    out: Parameters = {}
    for key, param in params.items():
        kind = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, kind) if kind else None
    return out


def _set_parameter(target: pb.InferParameter, value: Parameter) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if value > _INT64_MAX:
            target.uint64_param = value
        else:
            target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> np.ndarray | list[bytes]:
    """Typed contents as values: the field the datatype names (an empty array when the
    datatype names none, so the data plane still sees that data came)."""
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        return np.empty(0)
    values = getattr(tensor.contents, field)
    return list(values) if field == "bytes_contents" else np.asarray(values)


def _input(
    tensor: pb.ModelInferRequest.InferInputTensor, params: Parameters, raw: bytes | None
) -> tuple[InputTensor, str]:
    """One input; a wire error (both typed and raw contents) for the data plane to raise."""
    has_contents = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
    data = raw if raw is not None else (_contents(tensor) if has_contents else None)
    name = tensor.name
    problem = ""
    if raw is not None and has_contents:
        problem = f"input '{name}': both contents and raw_input_contents are set; send one"
    # ``shape[:]``: a list in one call (``list(shape)`` iterates the container: 4x slower)
    return InputTensor(name, tensor.datatype, tensor.shape[:], data, params), problem


def request_from_pb(message: pb.ModelInferRequest, limits: RequestLimits) -> InferRequest:
    """The data plane's request. The request caps are checked first, on counts alone:
    nothing is converted from a request that carries too many items."""
    inputs, outputs, params = message.inputs, message.outputs, message.parameters
    request_caps.check_counts(limits, len(inputs), len(outputs), 0)
    count = len(params)
    for item in inputs:
        count += len(item.parameters)
    for item in outputs:
        count += len(item.parameters)
    request_caps.check_counts(limits, 0, 0, count)
    raws = message.raw_input_contents
    problem = ""
    if raws and len(raws) != len(inputs):
        problem = f"raw_input_contents has {len(raws)} entries for {len(inputs)} input" + (
            "s" if len(inputs) != 1 else ""
        )
    built = []
    for i, tensor in enumerate(inputs):
        raw = raws[i] if raws and not problem else None
        one, wrong = _input(tensor, _parameters(tensor.parameters) if count else {}, raw)
        built.append(one)
        problem = problem or wrong
    return InferRequest(
        message.model_name,
        message.model_version,
        message.id,
        built,
        [RequestedOutput(o.name, _parameters(o.parameters) if count else {}) for o in outputs],
        _parameters(params) if count else {},
        problem,
    )


def response_to_pb(
    answer: InferResponse, message: pb.ModelInferResponse | None = None
) -> pb.ModelInferResponse:
    """The answer as protobuf (into ``message`` when given: a stream's answer is built in
    place). Each output's bytes are made once, as raw contents; a tensor written into
    shared memory keeps its place with empty bytes (raw contents are positional)."""
    message = pb.ModelInferResponse() if message is None else message
    message.model_name, message.model_version, message.id = (
        answer.model_name,
        answer.model_version,
        answer.id,
    )
    for key, value in answer.parameters.items():
        _set_parameter(message.parameters[key], value)
    raws = message.raw_output_contents
    for out in answer.outputs:
        tensor = message.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        for key, value in out.parameters.items():
            _set_parameter(tensor.parameters[key], value)
        raws.append(tensors.raw_bytes(out.datatype, out.data))
    return message
