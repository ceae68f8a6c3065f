"""The data plane's answers as KServe v2 REST JSON (plus binary outputs): strict JSON,
never a bare NaN (a browser's ``JSON.parse`` would throw on it)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from server.core import tensors
from server.core.messages import InferResponse

_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
# JSON has no NaN or Infinity: answers spell them as protobuf's JSON mapping does (strings
# that numpy, float() and JavaScript's Number() read back); requests may do the same.
_SPELLED = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _spelled(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) as its string spelling."""
    if isinstance(value, float) and not math.isfinite(value):
        return _SPELLED[repr(value)]
    if isinstance(value, dict):
        return {k: _spelled(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_spelled(v) for v in value]
    return value


def dumps(doc: Any) -> str:
    """Strict JSON for any answer (``web.json_response(dumps=...)``): never a bare NaN."""
    try:
        return json.dumps(doc, allow_nan=False)
    except ValueError:
        return json.dumps(_spelled(doc), allow_nan=False)


# --- protobuf -> JSON (metadata, config, statistics) -------------------------------------


def message_json(message: Message) -> dict[str, Any]:
    """A message as Triton's REST answers print it: field names as in the .proto, zeros
    included, and 64-bit integers as JSON numbers (protobuf's JSON mapping quotes them)."""
    doc = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers(doc, message.DESCRIPTOR)
    return doc


def _numbers(doc: dict[str, Any], descriptor: Any) -> None:
    for name, value in doc.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            inner = field.message_type.fields_by_name["value"]
            for key in value:
                value[key] = _fixed(value[key], inner)
        elif isinstance(value, list):
            doc[name] = [_fixed(v, field) for v in value]
        else:
            doc[name] = _fixed(value, field)


def _fixed(value: Any, field: FieldDescriptor) -> Any:
    if field.type in _INT64 and isinstance(value, str):
        return int(value)
    if field.message_type is not None and isinstance(value, dict):
        _numbers(value, field.message_type)
    return value


# --- InferResponse -> JSON (+ binary) ----------------------------------------------------


def _json_data(data: np.ndarray | list[str] | list[bytes]) -> list[Any]:
    """Values as JSON: classification strings as they are, numbers as a flat list."""
    if not isinstance(data, np.ndarray):
        return [e if isinstance(e, str) else e.decode("utf-8", "replace") for e in data]
    values = data.reshape(-1).tolist()
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        return _spelled(values)
    return values


def json_weight(answer: InferResponse, binary: Callable[[str], bool]) -> int:
    """About how many bytes of values the answer's JSON form holds (what not to encode on
    the event loop): each value's binary size."""
    weight = 0
    for out in answer.outputs:
        if out.data is None or binary(out.name):
            continue
        data = out.data
        weight += data.nbytes if isinstance(data, np.ndarray) else sum(len(e) for e in data)
    return weight


def encode_infer(
    response: InferResponse, binary: Callable[[str], bool]
) -> tuple[bytes, int | None]:
    """The REST answer: JSON, then the binary outputs; the JSON length when there are any."""
    outputs, tail = [], []
    for tensor in response.outputs:
        params = dict(tensor.parameters)
        out: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if tensor.data is None:
            pass  # written into the client's shared memory region
        elif binary(tensor.name):
            raw = tensors.raw_bytes(tensor.datatype, tensor.data)
            params["binary_data_size"] = len(raw)
            tail.append(raw)
        else:
            out["data"] = _json_data(tensor.data)
        if params:
            out["parameters"] = params
        outputs.append(out)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = dict(response.parameters)
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not tail:
        return header, None
    return b"".join([header, *tail]), len(header)
