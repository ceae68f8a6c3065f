"""Every REST answer checked against the Open Inference Protocol's schemas (issue 27).

tests/server/http/oip/rest_schemas.json writes the OIP's REST objects ($server_metadata_response,
$metadata_model_response, $inference_response, $inference_error_response, ...) and
Triton's extension answers (statistics, repository index, shared-memory status) as
JSON Schema; each endpoint of a real server is called as a plain HTTP client would
and its body validated with jsonschema. Error answers must also never name a server
path (the repository folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from tests.kit.http_kit import HEADER_LENGTH, Reply, call, fp32
from tests.kit.triton_helpers import LENET, LITE0, Reference, assert_close

SCHEMAS = json.loads(Path(__file__).with_name("oip").joinpath("rest_schemas.json").read_text())
Draft202012Validator.check_schema(SCHEMAS)

_X = np.random.default_rng(7).standard_normal((2, 1, 32, 32)).astype(np.float32)
_INFER = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 32, 32],
                      "data": _X.ravel().tolist()}]}  # fmt: skip
_TOP3 = {**_INFER, "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}
_RAW = {HEADER_LENGTH: "0", "Content-Type": "application/octet-stream"}

# (case, method, path, body, headers, status, schema)
CASES: list[tuple[str, str, str, Any, dict[str, str] | None, int, str]] = [
    ("live", "GET", "/v2/health/live", None, None, 200, "server_live"),
    ("ready", "GET", "/v2/health/ready", None, None, 200, "server_ready"),
    ("server_metadata", "GET", "/v2", None, None, 200, "server_metadata"),
    ("server_metadata_slash", "GET", "/v2/", None, None, 200, "server_metadata"),
    ("model_metadata", "GET", f"/v2/models/{LENET}", None, None, 200, "model_metadata"),
    ("version_metadata", "GET", f"/v2/models/{LENET}/versions/1", None, None, 200,
     "model_metadata"),
    ("image_metadata", "GET", f"/v2/models/{LITE0}", None, None, 200, "model_metadata"),
    ("model_ready", "GET", f"/v2/models/{LENET}/ready", None, None, 200, "model_ready"),
    ("version_ready", "GET", f"/v2/models/{LENET}/versions/1/ready", None, None, 200,
     "model_ready"),
    ("not_ready", "GET", f"/v2/models/{LENET}/versions/9/ready", None, None, 400, "model_ready"),
    ("model_config", "GET", f"/v2/models/{LENET}/config", None, None, 200, "model_config"),
    ("statistics", "GET", f"/v2/models/{LENET}/stats", None, None, 200, "statistics"),
    ("all_statistics", "GET", "/v2/models/stats", None, None, 200, "statistics"),
    ("repository_index", "POST", "/v2/repository/index", b"{}", None, 200, "repository_index"),
    ("infer", "POST", f"/v2/models/{LENET}/infer", _INFER, None, 200, "inference_response"),
    ("classification", "POST", f"/v2/models/{LENET}/infer", _TOP3, None, 200,
     "inference_response"),
    ("raw_binary", "POST", f"/v2/models/{LENET}/infer", fp32(_X), _RAW, 200,
     "inference_response"),
    ("system_shm_status", "GET", "/v2/systemsharedmemory/status", None, None, 200,
     "system_shm_status"),
    ("cuda_shm_status", "GET", "/v2/cudasharedmemory/status", None, None, 200,
     "cuda_shm_status"),
    ("unknown_model", "GET", "/v2/models/no_such_model", None, None, 404, "error"),
    ("unknown_model_infer", "POST", "/v2/models/no_such_model/infer", _INFER, None, 404,
     "error"),
    ("unknown_version", "GET", f"/v2/models/{LENET}/versions/9", None, None, 404, "error"),
    ("bad_json", "POST", f"/v2/models/{LENET}/infer", b"{not json", None, 400, "error"),
    ("unknown_region", "GET", "/v2/systemsharedmemory/region/nowhere/status", None, None, 404,
     "error"),
    ("cuda_register", "POST", "/v2/cudasharedmemory/region/gpu/register",
     {"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 16}, None, 400, "error"),
    ("load_unknown", "POST", "/v2/repository/models/no_such_model/load", b"{}", None, 404,
     "error"),
    ("raw_binary_ragged", "POST", f"/v2/models/{LENET}/infer", b"\0" * 10, _RAW, 400, "error"),
    ("unknown_route", "GET", "/v2/nowhere", None, None, 404, "error"),
]  # fmt: skip


@pytest.fixture(scope="module")
def replies(http_server: Any) -> dict[str, Reply]:
    base = f"http://127.0.0.1:{http_server.http_port}"
    return {
        case: call(base + path, body, headers, method)
        for case, method, path, body, headers, _, _ in CASES
    }


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({**SCHEMAS, "$ref": f"#/$defs/{name}"})


@pytest.mark.parametrize(("case", "status", "schema"), [(c[0], c[5], c[6]) for c in CASES])
def test_answer_matches_the_oip_schema(
    replies: dict[str, Reply], case: str, status: int, schema: str
) -> None:
    reply = replies[case]
    assert reply.status == status, (case, reply.status, reply.body[:300])
    errors = [e.message for e in _validator(schema).iter_errors(reply.json())]
    assert not errors, (case, errors, reply.body[:300])


def test_no_error_names_a_server_path(replies: dict[str, Reply], triton_repository: Path) -> None:
    for case, *_, schema in CASES:
        if schema == "error":
            message = replies[case].json()["error"]
            assert str(triton_repository) not in message and "/tmp" not in message, case


def test_the_raw_binary_request_is_the_one_input(
    replies: dict[str, Reply], lenet_reference: Reference
) -> None:
    (output,) = replies["raw_binary"].json()["outputs"]
    assert output["shape"] == [2, 10]
    assert_close(np.reshape(output["data"], (2, 10)), lenet_reference(_X))
    ragged = replies["raw_binary_ragged"].json()["error"]
    assert "10 bytes" in ragged and "4096 bytes each" in ragged, ragged


def test_triton_wording_for_unknown_models(replies: dict[str, Reply]) -> None:
    unknown = "Request for unknown model: 'no_such_model' is not found"
    assert replies["unknown_model"].json()["error"] == unknown
    assert replies["unknown_model_infer"].json()["error"] == unknown
    version = replies["unknown_version"].json()["error"]
    assert version == f"Request for unknown model: '{LENET}' version 9 is not found"
    assert replies["model_ready"].json() == {"name": LENET, "ready": True}
    assert replies["server_metadata_slash"].body == replies["server_metadata"].body
