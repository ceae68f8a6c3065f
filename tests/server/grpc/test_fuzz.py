"""Thousands of generated malformed requests against a real server (hypothesis).

Each case starts from a valid request and breaks one or two things about it;
the server must answer with one of the codes that the broken part allows and a
message naming it, never INTERNAL/UNKNOWN, while a stream of valid requests
keeps succeeding. The module prints how many cases it tried. Cases are
derandomized (the same every run); FUZZ_EXAMPLES=N per test digs deeper. The
strategies are in fuzz_kit.py; bombs and image modes in test_image_decoding.py.
"""

from __future__ import annotations

import re
from collections import Counter

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos import grpc_service_pb2_grpc as pb_grpc
from tests.kit.fuzz_kit import (  # noqa: F401 (stream: a fixture)
    FUZZ,
    JPEG,
    NEVER,
    PNG,
    broken_request,
    image_element,
    module_server,
    outcome,
    stream,
)
from tests.kit.serving import ServerProcess, digits, tensor_request
from tests.kit.stress import flip, image_request

pytestmark = pytest.mark.usefixtures("stream")  # valid requests succeed all the while
TRIED: Counter[str] = Counter()
server = module_server(TRIED)


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> grpc.Channel:
    return grpc.insecure_channel(server.url)


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


@FUZZ
@given(case=broken_request())
def test_malformed_tensor_requests(stub, case) -> None:
    req, codes, words = case
    code, message = outcome(lambda: stub.ModelInfer(req, timeout=30))
    TRIED["tensor"] += 1
    assert code in codes, (code, message, codes)
    assert any(w in message for w in words), (message, words)


@FUZZ
@given(
    elements=st.lists(image_element(), min_size=1, max_size=4),
    raw=st.booleans(),
    shape_kind=st.sampled_from(["n", "n1", "wrong"]),
)
def test_malformed_images(stub, elements, raw, shape_kind) -> None:
    data = [e for e, _ in elements]
    n = len(data)
    shape = {"n": [n], "n1": [n, 1], "wrong": [n + 1]}[shape_kind]
    req = image_request(data, shape, raw)
    code, message = outcome(lambda: stub.ModelInfer(req, timeout=60))
    TRIED["image"] += 1
    if shape_kind == "wrong" or any(bad for _, bad in elements):
        assert code == "INVALID_ARGUMENT", (code, message)
    assert code in {"OK", "INVALID_ARGUMENT"}, (code, message)
    if code != "OK":
        assert re.search(r"element \d+|BYTES|elements", message), message


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=3000),
        st.tuples(
            st.sampled_from(["tensor", "image"]), st.lists(st.integers(0, 10**6), max_size=6)
        ),
    )
)
def test_bytes_that_are_not_a_request(channel, body) -> None:
    """The wire format itself broken: random bodies and bit-flipped valid requests."""
    if isinstance(body, tuple):
        kind, flips = body
        valid = tensor_request("lenet5", digits(1)) if kind == "tensor" else image_request([PNG])
        body = flip(valid.SerializeToString(), flips) if flips else valid.SerializeToString()
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    code, message = outcome(lambda: call(body, timeout=30))
    TRIED["wire"] += 1
    assert code not in NEVER, (code, message)


# --- fixed cases ---------------------------------------------------------------
def test_oversize_message_is_refused_cleanly(server: ServerProcess, stub) -> None:
    """--max-message-mb 4 here: gRPC refuses a 6 MiB body before our code reads it."""
    big = tensor_request("mobilenet_v2", np.zeros((1, 3, 724, 724), np.float32))
    code, message = outcome(lambda: stub.ModelInfer(big, timeout=30))
    assert code == "RESOURCE_EXHAUSTED" and "larger than max" in message, (code, message)
    assert "(6290" in message and "4194304)" in message, message  # both sizes are named
