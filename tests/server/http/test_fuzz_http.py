"""The gRPC fuzz strategies (fuzz_kit.py) against the HTTP/REST frontend (hypothesis).

Each broken gRPC request of test_fuzz.py is sent again as a REST request
(JSON header, tensor bytes in Triton's binary extension), beside random JSON
documents, random bodies with random header lengths, and broken images. The
answer is never a 5xx other than 503, always a JSON ``{"error"}`` when it is
not 200, and a stream of valid gRPC requests keeps succeeding meanwhile.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos import grpc_service_pb2 as pb
from tests.kit.fuzz_kit import FUZZ as FUZZ_GRPC
from tests.kit.fuzz_kit import broken_request, image_element, stream, texts  # noqa: F401 (fixture)
from tests.kit.http_kit import HEADER_LENGTH, Reply, binary_request, call, length_prefixed
from tests.kit.serving import ServerProcess, start_server
from tests.kit.stress import report

pytestmark = pytest.mark.usefixtures("stream")  # valid gRPC requests succeed all the while
# The gRPC suite's settings, fewer cases by default: each HTTP case is also a new connection.
FUZZ = settings(FUZZ_GRPC, max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")))
TRIED: Counter[str] = Counter()
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory, request):
    log_dir = tmp_path_factory.mktemp("fuzz-http")
    srv = start_server(serve_repo, "--max-message-mb", "4", log_dir=log_dir)
    yield srv
    parts = ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items()))
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(STATUSES.items()))
    report(request.config, f"\nHTTP fuzz: {sum(TRIED.values())} requests ({parts}); {codes}")
    assert srv.terminate() == 0, srv.output()[-3000:]
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


def _check(reply: Reply, kind: str) -> None:
    TRIED[kind] += 1
    STATUSES[reply.status] += 1
    assert reply.status < 500 or reply.status == 503, (reply.status, reply.body[:500])
    if reply.headers.get("Content-Type", "").startswith("application/json"):
        error = json.loads(reply.body).get("error") if reply.status != 200 else None
        assert reply.status == 200 or (error and "Traceback" not in error), reply.body[:300]
    else:  # aiohttp refused it before it was a request (e.g. a URL over 8 KiB): plain 400
        assert reply.status == 400, (reply.status, reply.body[:300])


def _value(param: pb.InferParameter) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else None


def to_rest(request: pb.ModelInferRequest) -> tuple[bytes, dict[str, str]]:
    """A (broken) gRPC request as the REST request a client would send for it."""
    raws = list(request.raw_input_contents)
    inputs: list[dict[str, Any]] = []
    for i, tensor in enumerate(request.inputs):
        spec: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        params = {k: _value(v) for k, v in tensor.parameters.items()}
        if i < len(raws):
            params["binary_data_size"] = len(raws[i])
        if tensor.contents.fp32_contents:
            spec["data"] = list(tensor.contents.fp32_contents)
        if params:
            spec["parameters"] = params
        inputs.append(spec)
    outputs = [
        {"name": o.name, "parameters": {k: _value(v) for k, v in o.parameters.items()}}
        for o in request.outputs
    ]
    header = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    headers = {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}
    return header + b"".join(raws), headers


@FUZZ
@given(case=broken_request())
def test_broken_tensor_requests_over_http(server: ServerProcess, case) -> None:
    request, _, _ = case
    body, headers = to_rest(request)
    url = f"{server.http_url}/v2/models/{quote(request.model_name, safe='')}/infer"
    _check(call(url, body, headers, timeout=60), "tensor")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=30,
)
input_specs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "image"]) | json_values,
        "datatype": st.sampled_from(["FP32", "BYTES", "UINT8", "INT64", "BF16", ""]) | json_values,
        "shape": st.lists(st.integers(-2, 40) | st.sampled_from([2**62, 2**64]), max_size=5)
        | json_values,
        "data": json_values,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "content_type", "shared_memory_region"]) | texts,
            json_values,
            max_size=3,
        ),
    },
)
documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "id": json_values,
            "inputs": st.lists(input_specs, max_size=3) | json_values,
            "outputs": json_values,
            "parameters": st.dictionaries(
                st.sampled_from(["timeout", "binary_data_output", "priority"]) | texts,
                json_values,
                max_size=3,
            ),
        },
    ),
)


@FUZZ
@given(
    doc=documents,
    tail=st.binary(max_size=300),
    model=st.sampled_from(["lenet5", "mobilenet_v2", "no_such_model"]),
)
def test_random_json_documents(server: ServerProcess, doc, tail, model) -> None:
    header = json.dumps(doc).encode()
    headers = {HEADER_LENGTH: str(len(header))} if tail else {}
    url = f"{server.http_url}/v2/models/{model}/infer"
    _check(call(url, header + tail, headers, timeout=60), "json")


@FUZZ
@given(
    body=st.binary(max_size=3000),
    header_length=st.none() | st.integers(-5, 4000).map(str) | texts,
)
def test_bytes_that_are_not_a_request_over_http(server: ServerProcess, body, header_length) -> None:
    headers = {} if header_length is None else {HEADER_LENGTH: header_length}
    try:
        reply = call(f"{server.http_url}/v2/models/lenet5/infer", body, headers, timeout=60)
    except ValueError:  # a header value http.client itself refuses to send
        return
    _check(reply, "bytes")


@FUZZ
@given(elements=st.lists(image_element(), min_size=1, max_size=4))
def test_broken_images_over_http(server: ServerProcess, elements) -> None:
    data = [e for e, _ in elements]
    body, headers = binary_request([("input", "BYTES", [len(data)], length_prefixed(data))])
    reply = call(f"{server.http_url}/v2/models/mobilenet_v2/infer", body, headers, timeout=60)
    _check(reply, "image")
    if any(bad for _, bad in elements):
        assert reply.status == 400, reply.body[:300]
