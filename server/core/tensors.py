"""KServe v2 tensors <-> numpy, and the classification extension.

Inputs arrive either as typed ``contents`` or as ``raw_input_contents``
(little-endian bytes, one blob per input; BYTES elements each prefixed by a
4-byte little-endian length, as Triton serialises them). Every check names
the tensor, what was expected and what came.
"""

from __future__ import annotations

import math
import re
import struct

import numpy as np

from protos import grpc_service_pb2 as pb
from server.core.errors import InvalidArgument, shown

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
}


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


def _element_count(shape: list[int], name: str) -> int:
    if not shape:
        raise InvalidArgument(f"input '{name}': shape is empty")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input '{name}': shape {list(shape)} has a negative dimension")
    return math.prod(shape)  # Python ints: [2**32, 2**32] must not wrap around to 0


def _check_one_source(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> None:
    if raw is not None and tensor.HasField("contents") and tensor.contents.ByteSize():
        raise InvalidArgument(
            f"input '{tensor.name}': both contents and raw_input_contents are set; send one"
        )


def decode_numeric(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, max_bytes: int
) -> np.ndarray:
    """A numeric input as a numpy array of its declared shape."""
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if datatype not in _NUMPY:
        raise InvalidArgument(
            f"input '{name}': unknown datatype '{datatype}'; known: {sorted(_NUMPY)} and BYTES"
        )
    count = _element_count(shape, name)
    _check_one_source(tensor, raw)
    dtype = np.dtype(_NUMPY[datatype]).newbyteorder("<")
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
    field = _CONTENTS_FIELD.get(datatype)
    values = getattr(tensor.contents, field) if field else []
    if len(values) != count:
        raise InvalidArgument(
            f"input '{name}': contents hold {len(values)} values but shape {shape} needs {count}"
        )
    return np.asarray(values, dtype=dtype).reshape(shape)


def decode_bytes(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> list[bytes]:
    """A BYTES input as a flat list of its elements."""
    count = _element_count(list(tensor.shape), tensor.name)
    _check_one_source(tensor, raw)
    if raw is not None:
        return parse_bytes_elements(raw, count, tensor.name)
    elements = list(tensor.contents.bytes_contents)
    if len(elements) != count:
        raise InvalidArgument(
            f"input '{tensor.name}': contents hold {len(elements)} elements but shape "
            f"{list(tensor.shape)} needs {count}"
        )
    return elements


def classification_k(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> int:
    """The requested top-k of the classification extension (0: not requested)."""
    if "classification" not in output.parameters:
        return 0
    param = output.parameters["classification"]
    kind = param.WhichOneof("parameter_choice")
    if kind in ("int64_param", "uint64_param"):
        k = getattr(param, kind)
    elif kind == "string_param" and _INTEGER.fullmatch(param.string_param):
        k = int(param.string_param)
    else:
        value = getattr(param, kind) if kind else None
        got = shown(value) if isinstance(value, str) else f"{kind} {value}"
        raise InvalidArgument(
            f"output {shown(output.name)}: parameter classification must be an integer "
            f"(int64_param, uint64_param or a decimal string_param), got {got}"
        )
    if k < 1:
        raise InvalidArgument(f"output {shown(output.name)}: classification count {k} must be >= 1")
    return int(k)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities: ensembles average them, explanations subtract them."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def classify(logits: np.ndarray, k: int, labels: tuple[str, ...]) -> list[bytes]:
    """Top-k per row as Triton's "score:index:label" strings (score = output value).

    ``k`` was checked against the model's classes before the request was queued."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    out = []
    for row, indices in zip(logits, order, strict=True):
        for i in indices:
            label = labels[i] if i < len(labels) else ""
            out.append(f"{row[i]:f}:{i}:{label}".encode())
    return out


def numpy_dtype(datatype: str) -> np.dtype | None:
    """The little-endian numpy dtype of a KServe v2 numeric datatype; None for BYTES/unknown."""
    found = _NUMPY.get(datatype)
    return None if found is None else np.dtype(found).newbyteorder("<")
