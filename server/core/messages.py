"""The data plane's one request type and one answer type (MLServer's InferenceRequest and
InferenceResponse are the model): each frontend translates its wire form at its edge.

gRPC and the cluster replica go through ``server/core/converters.py`` (both receive
KServe protobuf); HTTP builds these from JSON and writes them back as JSON in
``server/http/codec.py`` and ``answers.py``. Nothing is framed in one layer to be
unframed in the next: BYTES elements are lists of ``bytes`` (classification answers:
``str``), numeric tensors numpy arrays; only bytes that arrive framed on a wire
(gRPC raw contents, HTTP's binary extension, shared memory) are unframed, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# A tensor's or request's parameter as a Python value (protobuf's InferParameter oneof,
# a JSON scalar); None: a protobuf parameter whose oneof holds nothing.
Parameter = bool | int | float | str | None
Parameters = dict[str, Parameter]


@dataclass(slots=True)
class InputTensor:
    """One input as sent, not yet checked against the model (the data plane checks it).

    ``data``: numeric values as a numpy array (JSON data, protobuf typed contents);
    BYTES elements as a list of ``bytes``; ``bytes`` when the tensor arrived as raw
    little-endian bytes (gRPC raw contents, HTTP binary extension, whose BYTES
    elements are length-prefixed as Triton sends them): read with ``np.frombuffer``
    where its datatype and shape are checked, never copied; None when not sent
    (a shared-memory region named in ``parameters``, or a request missing its data).
    """

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes] | bytes | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client names; ``parameters``: classification, shared memory."""

    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[InputTensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)  # none: every output
    parameters: Parameters = field(default_factory=dict)
    # What the protobuf form got wrong that this form cannot hold (raw contents that do
    # not pair with the inputs, an input with both typed and raw contents): the data
    # plane raises it where it checks the inputs, so a request's first error stays the
    # one it always was.
    wire_error: str = ""


@dataclass(slots=True)
class OutputTensor:
    """``data``: a numpy array; classification strings as ``str``; None when written
    into the shared-memory region its ``parameters`` name."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[str] | list[bytes] | None
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str = ""
    outputs: list[OutputTensor] = field(default_factory=list)
    parameters: Parameters = field(default_factory=dict)
