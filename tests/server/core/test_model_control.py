"""Model control against real servers: off by default (Triton's --model-control-mode
none), and when switched on, guarded by a bearer token or mutual-TLS client certificates,
the same way over gRPC and HTTP, never repeating the token it was sent."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.core.control import Caller, ModelControl, ModelControlError
from server.core.errors import Unauthenticated
from server.settings.security import SecuritySettings
from server.settings.sources import section_env
from tests.kit.http_kit import Reply, call
from tests.kit.pki import make_pki
from tests.kit.serving import ROOT, ServerProcess, start_server

MODEL = "lenet5"
TOKEN = "s3cret-Token_4-model-control"  # what the operator put in the token file
WRONG = "guessed-token-0000"


@pytest.fixture(scope="module")
def repo(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("control-repo")
    shutil.copytree(serve_repo / MODEL, root / MODEL)
    return root


@pytest.fixture(scope="module")
def default_server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(repo, log_dir=tmp_path_factory.mktemp("control-default"))
    yield srv
    assert srv.terminate() == 0, srv.output()[-3000:]


@pytest.fixture(scope="module")
def token_server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("control-token")
    (folder / "token").write_text(f"{TOKEN}\n")
    security = SecuritySettings(
        model_control_mode="explicit", model_control_token_file=folder / "token"
    )
    srv = start_server(repo, log_dir=folder, security=security)
    yield srv
    assert srv.terminate() == 0, srv.output()[-3000:]


def _grpc_control(stub: pb_grpc.GRPCInferenceServiceStub, action: str, token: str | None):
    """RepositoryModelLoad/Unload; the RpcError if refused, else None."""
    metadata = None if token is None else (("authorization", token),)
    try:
        if action == "load":
            request = pb.RepositoryModelLoadRequest(model_name=MODEL)
            stub.RepositoryModelLoad(request, metadata=metadata)
        else:
            stub.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name=MODEL), metadata=metadata
            )
    except grpc.RpcError as err:
        return err
    return None


def _http_control(srv: ServerProcess, action: str, token: str | None) -> Reply:
    headers = {} if token is None else {"Authorization": token}
    return call(f"{srv.http_url}/v2/repository/models/{MODEL}/{action}", b"", headers)


def _ready(srv: ServerProcess) -> bool:
    return srv.stub().ModelReady(pb.ModelReadyRequest(name=MODEL)).ready


def test_model_control_is_off_by_default_on_both_protocols(default_server: ServerProcess) -> None:
    stub = default_server.stub()
    for action in ("unload", "load"):
        for token in (None, f"Bearer {TOKEN}"):  # a credential does not switch it on
            err = _grpc_control(stub, action, token)
            assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE, action
            assert "explicit model load / unload is not allowed" in err.details()
            assert "--model-control-mode explicit" in err.details()
            reply = _http_control(default_server, action, token)
            assert reply.status == 503, reply.body
            assert "explicit model load / unload is not allowed" in reply.json()["error"]
            assert "--model-control-mode explicit" in reply.json()["error"]
    assert _ready(default_server)
    # Reading the repository stays open.
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert [(m.name, m.state) for m in index.models] == [(MODEL, "READY")]
    listed = call(f"{default_server.http_url}/v2/repository/index", {})
    assert listed.status == 200 and listed.json()[0]["name"] == MODEL


def test_a_token_guards_grpc_model_control(token_server: ServerProcess) -> None:
    stub = token_server.stub()
    refusals = {
        None: "authorization: Bearer <token>",
        f"Bearer {WRONG}": "not the right one",
        TOKEN: "must read 'Bearer <token>'",  # the token without its scheme: never echoed
        "Basic dXNlcjpwYXNz": "must read 'Bearer <token>'",
    }
    for action in ("unload", "load"):
        for sent, reason in refusals.items():
            err = _grpc_control(stub, action, sent)
            assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED, sent
            assert reason in err.details(), err.details()
            assert TOKEN not in err.details() and WRONG not in err.details()
    assert _ready(token_server)
    assert _grpc_control(stub, "unload", f"Bearer {TOKEN}") is None
    assert not _ready(token_server)
    assert _grpc_control(stub, "load", f"bearer  {TOKEN} ") is None  # scheme: any case
    assert _ready(token_server)
    assert TOKEN not in token_server.output() and WRONG not in token_server.output()


def test_a_token_guards_http_model_control(token_server: ServerProcess) -> None:
    for action in ("unload", "load"):
        for sent in (None, f"Bearer {WRONG}", TOKEN, "Bearer "):
            reply = _http_control(token_server, action, sent)
            assert reply.status == 401, (sent, reply.body)
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN.encode() not in reply.body and WRONG.encode() not in reply.body
            assert "model " + action in reply.json()["error"]
    assert _ready(token_server)
    assert _http_control(token_server, "unload", f"Bearer {TOKEN}").status == 200
    assert not _ready(token_server)
    assert _http_control(token_server, "load", f"Bearer {TOKEN}").status == 200
    assert _ready(token_server)
    # Inference and metadata never need the token.
    assert call(f"{token_server.http_url}/v2/models/{MODEL}").status == 200


def test_token_from_an_environment_variable(repo: Path, tmp_path: Path) -> None:
    security = SecuritySettings(
        model_control_mode="explicit", model_control_token_env="CONTROL_TEST_TOKEN"
    )
    srv = start_server(repo, log_dir=tmp_path, security=security, env={"CONTROL_TEST_TOKEN": TOKEN})
    try:
        assert _http_control(srv, "unload", f"Bearer {WRONG}").status == 401
        assert _grpc_control(srv.stub(), "unload", f"Bearer {TOKEN}") is None
        assert _http_control(srv, "load", f"Bearer {TOKEN}").status == 200
        assert _ready(srv)
    finally:
        assert srv.terminate() == 0


@pytest.mark.parametrize(
    ("security", "expected"),
    [
        (
            SecuritySettings(model_control_mode="explicit", model_control_token_env="UNSET_VAR_X"),
            "environment variable UNSET_VAR_X (model_control_token_env) holds no token",
        ),
        (
            SecuritySettings(model_control_mode="explicit", model_control_client_certs=True),
            "model_control_client_certs trusts mutual-TLS client certificates: it needs",
        ),
        (
            SecuritySettings(
                model_control_mode="explicit", model_control_token_file=Path("/nonexistent/tok")
            ),
            "cannot read model_control_token_file /nonexistent/tok",
        ),
    ],
)
def test_unusable_control_settings_stop_the_start(
    repo: Path, tmp_path: Path, security: SecuritySettings, expected: str
) -> None:
    """The server refuses to start (exit 2, one line) rather than run unguarded."""
    env = {**section_env("security", security), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--model-repository", str(repo),
         "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "-1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if k != "UNSET_VAR_X"} | env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {expected}" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_poll_mode_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="'poll' .* is not supported: use 'explicit'"):
        SecuritySettings(model_control_mode="POLL")
    assert SecuritySettings(model_control_mode="EXPLICIT").model_control_mode == "explicit"


def test_the_check_compares_the_token_whatever_its_length(tmp_path: Path) -> None:
    """The same gate the servers use: prefixes, extensions and empty tokens all fail."""
    (tmp_path / "token").write_text(TOKEN)
    control = ModelControl(
        SecuritySettings(model_control_mode="explicit", model_control_token_file=tmp_path / "token")
    )
    control.authorize("load", Caller(f"Bearer {TOKEN}"))
    for sent in (TOKEN[:-1], TOKEN + "x", "", TOKEN.upper(), "\u00e9" + TOKEN):
        with pytest.raises(Unauthenticated):
            control.authorize("load", Caller(f"Bearer {sent}"))
    with pytest.raises(Unauthenticated):  # a client certificate counts only when trusted
        control.authorize("load", Caller(None, client_cert=True))
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ModelControlError, match="holds no token"):
        ModelControl(
            SecuritySettings(
                model_control_mode="explicit", model_control_token_file=tmp_path / "empty"
            )
        )


# --- mutual TLS -----------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("control-pki"))


def _mtls_server(repo: Path, pki: Path, folder: Path, trust_certs: bool) -> ServerProcess:
    folder.mkdir()
    (folder / "token").write_text(TOKEN)
    security = SecuritySettings(
        model_control_mode="explicit",
        model_control_token_file=folder / "token",
        model_control_client_certs=trust_certs,
    )
    tls = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"))
    return start_server(
        repo, *tls, "--tls-client-ca", str(pki / "ca.pem"), log_dir=folder, security=security
    )


def _mtls_stub(srv: ServerProcess, pki: Path) -> pb_grpc.GRPCInferenceServiceStub:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes(),
        certificate_chain=(pki / "client.pem").read_bytes(),
    )
    channel = grpc.secure_channel(
        srv.url, credentials, options=(("grpc.ssl_target_name_override", "localhost"),)
    )
    return pb_grpc.GRPCInferenceServiceStub(channel)


def _mtls_http(srv: ServerProcess, pki: Path, action: str) -> int:
    context = ssl.create_default_context(cafile=pki / "ca.pem")
    context.load_cert_chain(pki / "client.pem", pki / "client.key")
    url = f"https://localhost:{srv.http_port}/v2/repository/models/{MODEL}/{action}"
    request = urllib.request.Request(url, data=b"", method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_client_certificates_authorise_only_when_trusted(
    repo: Path, pki: Path, tmp_path: Path
) -> None:
    trusted = _mtls_server(repo, pki, tmp_path / "trusted", trust_certs=True)
    try:
        stub = _mtls_stub(trusted, pki)
        assert _grpc_control(stub, "unload", None) is None  # the certificate is the credential
        assert not stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
        assert _grpc_control(stub, "load", None) is None
        assert _mtls_http(trusted, pki, "unload") == 200
        assert _mtls_http(trusted, pki, "load") == 200
        assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
    finally:
        assert trusted.terminate() == 0
    untrusted = _mtls_server(repo, pki, tmp_path / "untrusted", trust_certs=False)
    try:
        stub = _mtls_stub(untrusted, pki)
        err = _grpc_control(stub, "unload", None)
        assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _mtls_http(untrusted, pki, "unload") == 401
        assert _grpc_control(stub, "unload", f"Bearer {TOKEN}") is None  # the token still works
    finally:
        assert untrusted.terminate() == 0
