"""KServe v2 REST requests -> the data plane's ``InferRequest`` (answers: answers.py).

The HTTP frontend translates and nothing more: a JSON inference request becomes
the data plane's request directly (numeric ``data`` a numpy array of its
datatype, BYTES ``data`` a list of ``bytes``: nothing framed to be unframed), and
a tensor in the binary extension is passed as the raw bytes it is, so
validation, batching and classification stay in the data plane. Every
datatype passes through by name; only JSON ``data`` needs its numpy dtype.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.core import request_caps, tensors
from server.core.errors import InvalidArgument, shown
from server.core.load_request import LoadRequest, from_json
from server.core.messages import InferRequest, InputTensor, Parameter, Parameters, RequestedOutput
from server.core.shared_memory import PARAM_REGION
from server.settings.limits import RequestLimits

HEADER_LENGTH = "Inference-Header-Content-Length"
_MAX_DIM = 1 << 62
_REQUEST_LIMITS = RequestLimits()
_HTTP_ONLY = ("binary_data_size", "binary_data", "content_type")  # tensor parameters
_REQUEST_ONLY = ("binary_data_output", "timeout")  # request parameters HTTP acts on


@dataclass(frozen=True)
class InferCall:
    """A parsed REST inference request: the message, and what only HTTP knows."""

    message: InferRequest
    binary_outputs: dict[str, bool]  # per requested output: answer in the binary tail
    binary_default: bool  # outputs not named (or named without binary_data)
    deadline: float | None  # time.monotonic() from the "timeout" parameter (microseconds)

    def binary(self, name: str) -> bool:
        return self.binary_outputs.get(name, self.binary_default)


# --- JSON -> InferRequest -----------------------------------------------------------


def _bare_constant(name: str) -> Any:
    raise InvalidArgument(
        f'request JSON holds a bare {name}, which is not JSON: send the string "{name}" '
        "or the tensor as binary data"
    )


def _parse_json(header: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(header, parse_constant=_bare_constant)
    except RecursionError:
        raise InvalidArgument("request JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"request JSON must be an object, got {type(doc).__name__}")
    return doc


def _typed(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = doc.get(key)
    if value is not None and not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise InvalidArgument(f"{where}: '{key}' must be {names}, got {type(value).__name__}")
    return value


def _parameter(value: Any, where: str) -> Parameter:
    if isinstance(value, bool | float | str) or (
        isinstance(value, int) and -(1 << 63) <= value < 1 << 63
    ):
        return value
    raise InvalidArgument(
        f"{where}: parameter values must be bool, 64-bit int, number or string, "
        f"got {shown(repr(value))}"
    )


def _parameters(
    params: dict[str, Any], where: str, drop: tuple[str, ...] = _HTTP_ONLY
) -> Parameters:
    return {
        key: _parameter(value, f"{where} parameter {shown(key)}")
        for key, value in params.items()
        if key not in drop
    }


def _shape(spec: dict[str, Any], where: str) -> list[int]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < _MAX_DIM for d in shape
    ):
        raise InvalidArgument(f"{where}: 'shape' must be a list of non-negative integers")
    return shape


def _flatten(data: Any, where: str) -> list[Any]:
    """Nested JSON arrays row-major into one list (JSON already bounds their depth)."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _count(found: int, shape: list[int], where: str) -> None:
    if found != math.prod(shape):
        raise InvalidArgument(
            f"{where}: 'data' holds {found} values but shape {shape} needs {math.prod(shape)}"
        )


def _bytes_data(data: Any, base64_encoded: bool, shape: list[int], where: str) -> list[bytes]:
    elements = []
    for i, item in enumerate(_flatten(data, where)):
        if not isinstance(item, str):
            raise InvalidArgument(f"{where}: BYTES element {i} must be a string")
        if base64_encoded:
            try:
                elements.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise InvalidArgument(f"{where}: element {i} is not base64: {exc}") from None
        else:
            elements.append(item.encode())
    _count(len(elements), shape, where)
    return elements


def _numeric_data(data: Any, datatype: str, shape: list[int], where: str) -> np.ndarray | None:
    dtype = tensors.numpy_dtype(datatype)
    if dtype is None:
        return None  # the data plane names the datatype and the accepted ones
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(f"{where}: 'data' is not an array of {datatype}: {exc}") from None
    _count(array.size, shape, where)
    return array


def _input(spec: Any, index: int, tail: memoryview, offset: int) -> tuple[InputTensor, int]:
    """Input ``index`` (its data None: in shared memory) and the new binary offset."""
    where = f"input {index}"
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{where}: each input must be an object")
    name = _typed(spec, "name", str, where) or ""
    where = f"input {shown(name)}"
    datatype = _typed(spec, "datatype", str, where) or ""
    params = _typed(spec, "parameters", dict, where) or {}
    tensor = InputTensor(name, datatype, _shape(spec, where), None, _parameters(params, where))
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise InvalidArgument(f"{where}: has both 'data' and binary_data_size; send one")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"{where}: binary_data_size must be a non-negative integer")
        if offset + size > len(tail):
            raise InvalidArgument(
                f"{where}: binary_data_size {size} runs past the {len(tail)} binary bytes sent"
            )
        tensor.data = bytes(tail[offset : offset + size])  # raw, as the binary extension sent it
        return tensor, offset + size
    if "data" not in spec:
        if PARAM_REGION in params:
            return tensor, offset
        raise InvalidArgument(f"{where}: no 'data', binary_data_size or shared memory region")
    if params.get("content_type") not in (None, "base64") or (
        params.get("content_type") and datatype != "BYTES"
    ):
        raise InvalidArgument(
            f"{where}: content_type {shown(str(params['content_type']))} is not accepted; "
            "'base64' on a BYTES input decodes each string"
        )
    if datatype == "BYTES":
        encoded = params.get("content_type") == "base64"
        tensor.data = _bytes_data(spec["data"], encoded, tensor.shape, where)
    else:
        tensor.data = _numeric_data(spec["data"], datatype, tensor.shape, where)
    return tensor, offset


def _check_counts(doc: dict[str, Any], params: dict[str, Any], limits: RequestLimits) -> None:
    """The request caps on the JSON lists, before one entry is built from them."""
    inputs = _typed(doc, "inputs", list, "request") or []
    outputs = _typed(doc, "outputs", list, "request") or []
    request_caps.check_counts(limits, len(inputs), len(outputs), len(params))
    tensor_params = sum(
        len(spec["parameters"])
        for spec in (*inputs, *outputs)
        if isinstance(spec, dict) and isinstance(spec.get("parameters"), dict)
    )
    request_caps.check_counts(limits, 0, 0, len(params) + tensor_params)


def _outputs(doc: dict[str, Any], message: InferRequest) -> dict[str, bool]:
    binary: dict[str, bool] = {}
    for index, spec in enumerate(_typed(doc, "outputs", list, "request") or []):
        if not isinstance(spec, dict):
            raise InvalidArgument(f"output {index}: each output must be an object")
        name = _typed(spec, "name", str, f"output {index}") or ""
        where = f"output {shown(name)}"
        params = _typed(spec, "parameters", dict, where) or {}
        message.outputs.append(RequestedOutput(name, _parameters(params, where)))
        if "binary_data" in params:
            binary[name] = _typed(params, "binary_data", bool, where)
    return binary


def parse_infer(
    body: bytes,
    header_length: str | None,
    model: str,
    version: str,
    limits: RequestLimits = _REQUEST_LIMITS,
) -> InferCall:
    """A REST inference body (JSON, then binary tensors when the header says so)."""
    if header_length is None:
        split = len(body)
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidArgument(
                f"{HEADER_LENGTH} {shown(header_length)} must be a byte count of at most the "
                f"{len(body)}-byte body"
            )
        split = int(header_length)
    doc = _parse_json(body[:split])
    tail = memoryview(body)[split:]
    request_id = _typed(doc, "id", str, "request") or ""
    params = _typed(doc, "parameters", dict, "request parameters") or {}
    _check_counts(doc, params, limits)
    message = InferRequest(
        model, version, request_id, parameters=_parameters(params, "request", _REQUEST_ONLY)
    )
    offset = 0
    for index, spec in enumerate(_typed(doc, "inputs", list, "request") or []):
        tensor, offset = _input(spec, index, tail, offset)
        message.inputs.append(tensor)
    if offset != len(tail):
        raise InvalidArgument(
            f"the body carries {len(tail)} binary bytes but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    binary_default = _typed(params, "binary_data_output", bool, "request parameters") or False
    return InferCall(message, _outputs(doc, message), binary_default, _deadline(params))


def parse_raw(
    body: bytes, model: str, version: str, name: str, datatype: str, dims: list[int]
) -> InferCall:
    """Triton's raw binary request (``Inference-Header-Content-Length: 0``): the body is
    the one input's bytes, its batch size what the byte count divides into; every output
    answers as JSON, as with a JSON request that names none."""
    dtype = tensors.numpy_dtype(datatype)
    if dtype is None or any(d < 0 for d in dims):
        raise InvalidArgument(
            f"a raw binary request (no JSON header) needs an input of fixed shape; input "
            f"{shown(name)} has dims {dims}: send a JSON header naming the shape"
        )
    row = math.prod(dims) * np.dtype(dtype).itemsize
    if not body or len(body) % row:
        raise InvalidArgument(
            f"raw binary request of {len(body)} bytes is not a whole number of {datatype} "
            f"rows of dims {dims} ({row} bytes each)"
        )
    tensor = InputTensor(name, datatype, [len(body) // row, *dims], body)
    return InferCall(InferRequest(model, version, inputs=[tensor]), {}, False, None)


def _deadline(params: dict[str, Any]) -> float | None:
    timeout = params.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        raise InvalidArgument(f"parameter timeout must be microseconds >= 0, got {timeout!r}")
    return time.monotonic() + timeout / 1e6


def index_ready(body: bytes) -> bool:
    """The repository index request: an optional JSON object with a boolean "ready"."""
    if not body.strip():
        return False
    return bool(_typed(_parse_json(body), "ready", bool, "repository index request"))


def load_request(body: bytes) -> LoadRequest:
    """The repository load request: empty, or ``{"parameters": {...}}`` (Triton's ``config``
    and base64 ``file:<version>/<name>`` values)."""
    return from_json(_parse_json(body) if body.strip() else None)
