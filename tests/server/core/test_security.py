"""Security for real: no path traversal through names, checkpoints loaded without
pickle code, TLS and mutual TLS with certificates made here, metrics on loopback only."""

from __future__ import annotations

import ast
import http.client
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from client.client import ClientError, InferenceClient, TlsConfig
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.kit.pki import make_pki
from tests.kit.serving import EXPLICIT, ROOT, ServerProcess, digits, start_server, tensor_request

TRAVERSALS = [
    "../outside/evil", "..", ".", "lenet5/../../outside/evil", "/etc", "outside/../lenet5",
    "..\\outside\\evil", "%2e%2e%2foutside", "lenet5\n", "lenet5\x00", "~root", " lenet5",
]  # fmt: skip


@pytest.fixture(scope="module")
def traversal_server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("traversal")
    shutil.copytree(serve_repo / "lenet5", root / "repo" / "lenet5")
    shutil.copytree(serve_repo / "lenet5", root / "outside" / "evil")  # a loadable model
    srv = start_server(root / "repo", log_dir=root, security=EXPLICIT)
    yield srv
    assert srv.terminate() == 0


def test_names_never_reach_the_filesystem(traversal_server: ServerProcess) -> None:
    stub = traversal_server.stub()
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    calls = {
        "RepositoryModelLoad": lambda n: stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name=n)
        ),
        "RepositoryModelUnload": lambda n: stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name=n)
        ),
        "ModelMetadata": lambda n: stub.ModelMetadata(pb.ModelMetadataRequest(name=n)),
        "ModelConfig": lambda n: stub.ModelConfig(pb.ModelConfigRequest(name=n)),
        "ModelStatistics": lambda n: stub.ModelStatistics(pb.ModelStatisticsRequest(name=n)),
        "ModelInfer": lambda n: stub.ModelInfer(tensor_request(n, digits(1))),
    }
    for rpc, call in calls.items():
        for name in TRAVERSALS:
            with pytest.raises(grpc.RpcError) as err:
                call(name)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, name)
            assert "invalid model name" in err.value.details(), (rpc, name)
    assert stub.RepositoryIndex(pb.RepositoryIndexRequest()) == index  # nothing loaded
    assert not stub.ModelReady(pb.ModelReadyRequest(name="../outside/evil")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="lenet5")).ready


def test_checkpoints_are_loaded_without_running_pickled_code(tmp_path: Path) -> None:
    import torch

    from exporter.weights import WeightsError, load_with_weights

    marker = tmp_path / "pwned"

    class Payload:  # unpickling it would create the marker file
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(WeightsError, match="cannot read"):
        load_with_weights("lenet5", str(path))
    assert not marker.exists()


def test_every_torch_load_passes_weights_only_true() -> None:
    """A static guard over the sources: no torch.load may unpickle arbitrary objects."""
    found = []
    for path in [*ROOT.glob("exporter/**/*.py"), *ROOT.glob("benchmarks/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                found.append(path)
                flags = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert flags.get("weights_only") == "True", f"{path}:{node.lineno}"
    assert found  # the guard looked at the real call sites


# --- TLS ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_server(serve_repo: Path, pki: Path, tmp: Path, *extra: str) -> ServerProcess:
    return start_server(
        serve_repo,
        *("--model", "lenet5", "--tls-cert", str(pki / "server.pem")),
        *("--tls-key", str(pki / "server.key"), *extra),
        log_dir=tmp,
    )


def test_tls_serves_trusting_clients_and_refuses_plaintext(
    serve_repo: Path, pki: Path, tmp_path: Path
) -> None:
    srv = _tls_server(serve_repo, pki, tmp_path)
    try:
        with InferenceClient(srv.url, timeout=10, tls=TlsConfig(ca=pki / "ca.pem")) as client:
            assert client.infer("lenet5", digits(2)).shape == (2, 10)
        with pytest.raises(grpc.RpcError) as err:  # plaintext to a TLS port
            pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(srv.url)).ServerLive(
                pb.ServerLiveRequest(), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        wrong = TlsConfig(ca=pki / "stranger-ca.pem")  # a server we cannot verify
        with InferenceClient(srv.url, timeout=5, tls=wrong) as client:
            with pytest.raises(ClientError, match="TLS"):
                client.live()
    finally:
        assert srv.terminate() == 0


def test_mutual_tls_needs_a_client_certificate(serve_repo: Path, pki: Path, tmp_path: Path) -> None:
    srv = _tls_server(serve_repo, pki, tmp_path, "--tls-client-ca", str(pki / "ca.pem"))
    try:
        anonymous = TlsConfig(ca=pki / "ca.pem")
        with InferenceClient(srv.url, timeout=5, tls=anonymous) as client:
            with pytest.raises(ClientError):
                client.live()
        cli = [sys.executable, "-m", "client", "--url", srv.url, "--tls-ca", str(pki / "ca.pem")]
        mine = ["--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")]
        done = subprocess.run([*cli, *mine, "models"], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0 and "lenet5" in done.stdout, done.stderr
        refused = subprocess.run([*cli, "models"], capture_output=True, text=True, cwd=ROOT)
        assert refused.returncode == 2 and "error:" in refused.stderr, refused.stderr
        probe = [sys.executable, "-m", "server.grpc.probe", "--address", srv.url, "--timeout", "5"]
        tls = ["--tls-ca", str(pki / "ca.pem")]
        healthy = subprocess.run([*probe, *tls, *mine], capture_output=True, text=True, cwd=ROOT)
        assert healthy.returncode == 0 and "SERVING" in healthy.stdout, healthy.stderr
        no_cert = subprocess.run([*probe, *tls], capture_output=True, text=True, cwd=ROOT)
        assert no_cert.returncode == 1, no_cert.stdout  # the container HEALTHCHECK fails
    finally:
        assert srv.terminate() == 0


def test_metrics_and_grpc_bound_to_loopback_only(traversal_server: ServerProcess) -> None:
    """Started with --host 127.0.0.1 --metrics-host 127.0.0.1 (as the launcher does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outward address
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    srv = traversal_server
    assert urllib.request.urlopen(srv.metrics_url, timeout=10).status == 200
    for port in (srv.metrics_port, srv.port):
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=5).close()


def test_http_serves_tls_with_the_same_certificates_and_cors_only_when_named(
    serve_repo: Path, pki: Path, tmp_path: Path
) -> None:
    srv = _tls_server(serve_repo, pki, tmp_path, "--http-cors-origin", "https://app.example")
    ready = f"https://127.0.0.1:{srv.http_port}/v2/health/ready"
    trusting = ssl.create_default_context(cafile=pki / "ca.pem")
    try:
        with urllib.request.urlopen(ready, timeout=10, context=trusting) as resp:
            assert resp.status == 200
        with pytest.raises(urllib.error.URLError):  # a server we cannot verify
            urllib.request.urlopen(ready, timeout=10, context=ssl.create_default_context())
        with pytest.raises((OSError, http.client.HTTPException)):  # plaintext to a TLS port
            urllib.request.urlopen(ready.replace("https", "http", 1), timeout=10).read()

        def preflight(origin: str) -> dict[str, str]:
            request = urllib.request.Request(
                ready, method="OPTIONS",
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=10, context=trusting) as resp:
                    return dict(resp.headers)
            except urllib.error.HTTPError as err:  # not allowed: no CORS answer for OPTIONS
                return dict(err.headers)

        allowed = preflight("https://app.example")
        assert allowed["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in allowed["Access-Control-Allow-Methods"]
        assert "Access-Control-Allow-Origin" not in preflight("https://elsewhere.example")
    finally:
        assert srv.terminate() == 0
