"""The HTTP port against a browser turned into a weapon, on a real server with model
control on and no token (the most exposed setting): cross-site simple requests, DNS
rebinding, foreign origins; the security headers; strict JSON both ways."""

from __future__ import annotations

import http.client
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from server.settings.security import SecuritySettings
from tests.kit.http_kit import HEADER_LENGTH, Reply, binary_request, call, fp32
from tests.kit.serving import ServerProcess, digits, start_server

MODEL = "lenet5"
APP = "https://app.example"  # the one CORS origin this server names
SECURITY = SecuritySettings(
    model_control_mode="explicit", allowed_hosts=("serving.internal", ".corp.example")
)


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("guard")
    shutil.copytree(serve_repo / MODEL, root / "repo" / MODEL)
    srv = start_server(
        root / "repo", "--http-cors-origin", APP, log_dir=root, security=SECURITY
    )  # fmt: skip
    yield srv
    assert srv.terminate() == 0, srv.output()[-3000:]
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


def _ready(srv: ServerProcess) -> bool:
    return srv.stub().ModelReady(pb.ModelReadyRequest(name=MODEL)).ready


def _unload(srv: ServerProcess, headers: dict[str, str], body: bytes = b"{}") -> Reply:
    return call(f"{srv.http_url}/v2/repository/models/{MODEL}/unload", body, headers)


def _strict(body: bytes) -> Any:
    """JSON as a browser's JSON.parse reads it: a bare NaN or Infinity is a syntax error."""

    def refuse(name: str) -> Any:
        raise ValueError(f"bare {name} in the answer")

    return json.loads(body, parse_constant=refuse)


def test_cross_site_simple_requests_cannot_unload(server: ServerProcess) -> None:
    """What a page on evil.example can make a visitor's browser send without a preflight."""
    evil = {"Origin": "https://evil.example"}
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        reply = _unload(server, {**evil, "Content-Type": content_type})
        assert reply.status == 403, (content_type, reply.status, reply.body)
        assert "Origin 'https://evil.example'" in reply.json()["error"]
        # Without the Origin (a non-browser tool): the content type alone is refused.
        reply = _unload(server, {"Content-Type": f"{content_type}; charset=utf-8"})
        assert reply.status == 415, (content_type, reply.body)
        assert "application/json" in reply.json()["error"]
    for origin in ("null", "http://10.1.2.3", "https://app.example.evil.com", "file://"):
        reply = _unload(server, {"Origin": origin, "Content-Type": "application/json"})
        assert reply.status == 403, (origin, reply.body)
    assert _ready(server)  # none of it reached the model
    # The same call, sent as a client would: accepted, so the guard was what refused.
    assert _unload(server, {"Content-Type": "application/json"}).status == 200
    assert not _ready(server)
    # tritonclient.http sends no Content-Type at all: accepted too.
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    connection.request("POST", f"/v2/repository/models/{MODEL}/load", body=b"")
    response = connection.getresponse()
    assert response.status == 200, response.read()
    connection.close()
    assert _ready(server)


def test_dns_rebinding_hosts_are_refused(server: ServerProcess) -> None:
    port = server.http_port
    url = f"{server.http_url}/v2/models/{MODEL}"
    for host in ("evil.example", f"evil.example:{port}", "corp.example.evil.com", "localhost.evil"):
        reply = call(url, headers={"Host": host})
        assert reply.status == 403, (host, reply.body)
        assert "allowed_hosts" in reply.json()["error"]
    # The rebound page posts "same-origin" from the browser's point of view.
    rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    assert _unload(server, {**rebound, "Content-Type": "application/json"}).status == 403
    assert _ready(server)
    for host in (
        f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "10.0.0.5", "app.localhost",
        "serving.internal", "corp.example", f"a.b.corp.example:{port}", "LOCALHOST.",
    ):  # fmt: skip
        assert call(url, headers={"Host": host}).status == 200, host
    assert call(url, headers={"Host": "a@b"}).status == 400


def test_origins_allowed_are_own_loopback_named_and_cors(server: ServerProcess) -> None:
    port = server.http_port
    url = f"{server.http_url}/v2/models/{MODEL}"
    for origin in (
        f"http://127.0.0.1:{port}", "http://localhost:3000", "http://[::1]:8080", APP,
        "https://serving.internal", "https://x.corp.example",
    ):  # fmt: skip
        assert call(url, headers={"Origin": origin}).status == 200, origin
    assert call(url, headers={"Origin": f"https://127.0.0.1:{port}"}).status == 200  # loopback
    assert call(url, headers={"Origin": "http://10.0.0.7:8000"}).status == 403

    def preflight(origin: str) -> Reply:
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        return call(f"{server.http_url}/v2/models/{MODEL}/infer", headers=headers, method="OPTIONS")

    allowed = preflight(APP)
    assert allowed.status == 204 and allowed.headers["Access-Control-Allow-Origin"] == APP
    refused = preflight("https://evil.example")
    assert refused.status == 403 and "Access-Control-Allow-Origin" not in refused.headers


def test_every_answer_carries_the_security_headers(server: ServerProcess) -> None:
    body, headers = binary_request([("input", "FP32", [1, 1, 32, 32], fp32(digits(1)))])
    replies = {
        "page": call(f"{server.http_url}/"),
        "script": call(f"{server.http_url}/static/app.js"),
        "metadata": call(f"{server.http_url}/v2"),
        "not found": call(f"{server.http_url}/nowhere"),
        "refused": _unload(server, {"Content-Type": "text/plain"}),
        "infer": call(f"{server.http_url}/v2/models/{MODEL}/infer", body, headers),
    }
    for what, reply in replies.items():
        h = reply.headers
        assert h["X-Content-Type-Options"] == "nosniff", what
        assert h["X-Frame-Options"] == "DENY", what
        assert "frame-ancestors 'none'" in h["Content-Security-Policy"], what
        assert h["Referrer-Policy"] == "no-referrer", what
        assert "aiohttp" not in h["Server"].lower() and "python" not in h["Server"].lower(), what
    assert replies["infer"].status == 200 and replies["page"].status == 200


def test_the_page_runs_under_its_content_security_policy() -> None:
    """No inline script or style for the CSP to block: everything comes from 'self'."""
    static = Path(__file__).resolve().parents[3] / "server" / "http" / "static"
    page = (static / "index.html").read_text()
    assert "<script>" not in page and "style=" not in page and "javascript:" not in page
    assert 'src="/static/app.js"' in page
    script = (static / "app.js").read_text()
    assert "eval(" not in script and "new Function" not in script and "innerHTML" not in script


def test_bare_nan_in_request_json_is_refused(server: ServerProcess) -> None:
    url = f"{server.http_url}/v2/models/{MODEL}/infer"
    for literal in ("NaN", "Infinity", "-Infinity"):
        values = ", ".join(["0.5"] * 1023 + [literal])
        doc = '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], '
        doc += f'"data": [{values}]}}]}}'
        reply = call(url, doc.encode(), {"Content-Type": "application/json"})
        assert reply.status == 400, reply.body
        assert f"bare {literal}, which is not JSON" in reply.json()["error"]
    assert _strict(call(f"{server.http_url}/v2/repository/index", b"{}").body)


def test_non_finite_outputs_are_strict_json_that_reads_back(server: ServerProcess) -> None:
    """An input of NaN and Infinity makes lenet5's logits non-finite: the JSON answer
    spells them as strings (protobuf's JSON mapping) that numpy reads back to the values
    of the binary answer; JSON input may spell them the same way."""
    x = digits(2)
    x[0, 0, :4, :4] = np.nan
    x[1, 0, 0, 0] = np.inf
    url = f"{server.http_url}/v2/models/{MODEL}/infer"
    inputs = [("input", "FP32", [2, 1, 32, 32], fp32(x))]
    body, headers = binary_request(inputs, outputs=[{"name": "logits"}])
    as_json = call(url, body, headers)
    assert as_json.status == 200, as_json.body
    assert HEADER_LENGTH not in as_json.headers
    data = _strict(as_json.body)["outputs"][0]["data"]
    assert {"NaN"} <= {v for v in data if isinstance(v, str)} <= {"NaN", "Infinity", "-Infinity"}
    body, headers = binary_request(
        inputs, outputs=[{"name": "logits", "parameters": {"binary_data": True}}]
    )
    as_binary = call(url, body, headers)
    raw = np.frombuffer(as_binary.binary(), dtype="<f4")
    np.testing.assert_array_equal(np.array(data, dtype=np.float32), raw)
    assert not np.isfinite(raw).all()
    spelled = [
        v if math.isfinite(v) else str(v).replace("nan", "NaN").replace("inf", "Infinity")
        for v in x.ravel().tolist()
    ]  # as JSON input: the same spelling
    doc = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 32, 32], "data": spelled}]
    }
    again = call(url, doc)
    assert again.status == 200, again.body
    np.testing.assert_array_equal(
        np.array(_strict(again.body)["outputs"][0]["data"], dtype=np.float32), raw
    )
