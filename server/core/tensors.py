"""KServe v2 tensors <-> numpy, and the classification extension.

An input's data (``server/core/messages.py``) is either values (a numpy array, a
list of BYTES elements) or raw little-endian bytes as a wire carries them (gRPC's
``raw_input_contents``, HTTP's binary extension, shared memory; BYTES elements each
prefixed by a 4-byte little-endian length, as Triton serialises them). Every check
names the tensor, what was expected and what came.
"""

from __future__ import annotations

import math
import re
import struct

import numpy as np

from server.core.errors import InvalidArgument, shown
from server.core.messages import InputTensor, Parameter, Parameters

_INTEGER = re.compile(r"\s*[+-]?[0-9]{1,18}\s*")

_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_LITTLE_ENDIAN = {name: np.dtype(t).newbyteorder("<") for name, t in _NUMPY.items()}
# The protobuf InferParameter field each Python parameter value travels in (error messages
# name it, as the client wrote it).
_KIND = {bool: "bool_param", int: "int64_param", float: "double_param", str: "string_param"}


def parse_bytes_elements(raw: bytes, count: int, name: str) -> list[bytes]:
    """Split Triton's length-prefixed BYTES serialisation into ``count`` elements."""
    out: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument(f"input '{name}': truncated BYTES length prefix at byte {offset}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(
                f"input '{name}': BYTES element {len(out)} declares {length} bytes but only "
                f"{len(raw) - offset} remain"
            )
        out.append(raw[offset : offset + length])
        offset += length
    if len(out) != count:
        raise InvalidArgument(f"input '{name}': shape holds {count} elements, got {len(out)}")
    return out


def serialize_bytes_elements(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def raw_bytes(datatype: str, data: np.ndarray | list[str] | list[bytes] | None) -> bytes:
    """An output's raw form (gRPC raw contents, HTTP binary data, shared memory):
    little-endian values, or BYTES elements length-prefixed; None (in shared memory): b""."""
    if data is None:
        return b""
    if isinstance(data, np.ndarray):  # tobytes writes C order whatever the array's layout
        return data.astype(_LITTLE_ENDIAN[datatype], copy=False).tobytes()
    return serialize_bytes_elements([e.encode() if isinstance(e, str) else e for e in data])


def _element_count(shape: list[int], name: str) -> int:
    if not shape:
        raise InvalidArgument(f"input '{name}': shape is empty")
    if min(shape) < 0:
        raise InvalidArgument(f"input '{name}': shape {list(shape)} has a negative dimension")
    return math.prod(shape)  # Python ints: [2**32, 2**32] must not wrap around to 0


def parameter_kind(value: Parameter) -> str:
    """The InferParameter field a parameter value came in (None: the oneof was empty)."""
    return _KIND.get(type(value), str(value))


def _value_count(data: object) -> int:
    if data is None:
        return 0
    return data.size if isinstance(data, np.ndarray) else len(data)  # type: ignore[arg-type]


def decode_numeric(tensor: InputTensor, raw: bytes | None, max_bytes: int) -> np.ndarray:
    """A numeric input as a numpy array of its declared shape; ``raw``: its bytes as
    they arrived (None: its values are ``tensor.data``)."""
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if datatype not in _NUMPY:
        raise InvalidArgument(
            f"input '{name}': unknown datatype '{datatype}'; known: {sorted(_NUMPY)} and BYTES"
        )
    count = _element_count(shape, name)
    dtype = _LITTLE_ENDIAN[datatype]
    expected = count * dtype.itemsize
    if expected > max_bytes:
        raise InvalidArgument(
            f"input '{name}': shape {shape} of {datatype} needs {expected:,} bytes, "
            f"over the limit of {max_bytes:,}"
        )
    if raw is not None:
        if len(raw) != expected:
            raise InvalidArgument(
                f"input '{name}': raw content is {len(raw)} bytes but shape {shape} of "
                f"{datatype} needs {expected}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    values = tensor.data
    if _value_count(values) != count:
        raise InvalidArgument(
            f"input '{name}': contents hold {_value_count(values)} values but shape {shape} "
            f"needs {count}"
        )
    return np.asarray(values, dtype=dtype).reshape(shape)


def decode_bytes(tensor: InputTensor, raw: bytes | None) -> list[bytes]:
    """A BYTES input as a flat list of its elements (``raw``: length-prefixed, as sent)."""
    count = _element_count(list(tensor.shape), tensor.name)
    if raw is not None:
        return parse_bytes_elements(raw, count, tensor.name)
    elements = tensor.data if isinstance(tensor.data, list) else []
    if len(elements) != count:
        raise InvalidArgument(
            f"input '{tensor.name}': contents hold {len(elements)} elements but shape "
            f"{list(tensor.shape)} needs {count}"
        )
    return elements


def classification_k(name: str, parameters: Parameters) -> int:
    """The requested top-k of the classification extension (0: not requested)."""
    if "classification" not in parameters:
        return 0
    value = parameters["classification"]
    if isinstance(value, int) and not isinstance(value, bool):
        k = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value):
        k = int(value)
    else:
        got = shown(value) if isinstance(value, str) else f"{parameter_kind(value)} {value}"
        raise InvalidArgument(
            f"output {shown(name)}: parameter classification must be an integer "
            f"(int64_param, uint64_param or a decimal string_param), got {got}"
        )
    if k < 1:
        raise InvalidArgument(f"output {shown(name)}: classification count {k} must be >= 1")
    return int(k)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities: ensembles average them, explanations subtract them."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def classify(logits: np.ndarray, k: int, labels: tuple[str, ...]) -> list[str]:
    """Top-k per row as Triton's "score:index:label" strings (score = output value).

    ``k`` was checked against the model's classes before the request was queued."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    out = []
    for row, indices in zip(logits, order, strict=True):
        for i in indices:
            label = labels[i] if i < len(labels) else ""
            out.append(f"{row[i]:f}:{i}:{label}")
    return out


def numpy_dtype(datatype: str) -> np.dtype | None:
    """The little-endian numpy dtype of a KServe v2 numeric datatype; None for BYTES/unknown."""
    return _LITTLE_ENDIAN.get(datatype)
