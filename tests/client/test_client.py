"""The client and its CLI against a real server process over KServe v2 gRPC.

One server per module, started with ``python -m server`` on a repository
exported here (LeNet trained on digits, EfficientNet-Lite0 with its ImageNet
weights), so every byte crosses a real socket. tritonclient is never imported:
its generated protos clash with ours in one process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from client import Classification, ClientError, InferenceClient
from client.cli import _input_shape
from exporter.samples import EXPECTED, PHONE_SOURCE, phone_photo
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from tests.kit.serving import start_server

ROOT = Path(__file__).resolve().parents[2]
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}


@dataclass(frozen=True)
class RunningServer:
    url: str
    repository: Path


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lenet5 and pretrained efficientnet_lite0 side by side, as the server reads them."""
    from exporter.pipeline import ExportRequest, export_model

    repo = tmp_path_factory.mktemp("client-repo")
    for request in (
        ExportRequest(model="lenet5", repository=repo),
        ExportRequest(model="efficientnet_lite0", weights="pretrained", repository=repo),
    ):
        export_model(request, progress=lambda _: None)
    return repo


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_server(
        repository, "--grace-seconds", "5", log_dir=tmp_path_factory.mktemp("server-log")
    )
    yield RunningServer(srv.url, repository)
    code = srv.terminate(timeout=30)
    assert code == 0, f"server exited {code}:\n{srv.output()[-3000:]}"


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[InferenceClient]:
    with InferenceClient(server.url, timeout=30) as c:
        yield c


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A port bound but not listening: connections are refused and nobody can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client", "--url", url, "--timeout", "30", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- the Python API ---------------------------------------------------------------


def test_health_and_server_metadata(client: InferenceClient) -> None:
    assert client.live() and client.ready()
    assert client.model_ready("lenet5") and not client.model_ready("no_such_model")
    meta = client.server_metadata()
    assert meta.name and "classification" in meta.extensions


def test_list_models_metadata_and_config(client: InferenceClient) -> None:
    rows = {(m.name, m.version, m.state) for m in client.list_models()}
    assert {("lenet5", "1", "READY"), ("efficientnet_lite0", "1", "READY")} <= rows
    meta = client.metadata("lenet5")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 1, 32, 32])
    ]
    assert [(t.name, list(t.shape)) for t in meta.outputs] == [("logits", [-1, 10])]
    config = client.config("efficientnet_lite0")
    assert config.max_batch_size >= 1
    assert config.parameters["preprocess.crop_size"].string_value == "224"


def test_infer_matches_onnxruntime_on_the_same_file(
    client: InferenceClient, server: RunningServer
) -> None:
    import onnxruntime as ort

    batch = np.random.default_rng(7).standard_normal((4, 1, 32, 32), dtype=np.float32)
    session = ort.InferenceSession(
        str(server.repository / "lenet5" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    (expected,) = session.run(None, {session.get_inputs()[0].name: batch})
    got = client.infer("lenet5", batch)
    assert got.dtype == np.float32 and got.shape == (4, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # float64 is cast to FP32 on the way out, not refused
    np.testing.assert_allclose(client.infer("lenet5", batch.astype(np.float64)), got, atol=1e-6)


def test_classify_tensor_agrees_with_raw_logits(client: InferenceClient) -> None:
    batch = np.random.default_rng(3).standard_normal((2, 1, 32, 32), dtype=np.float32)
    logits = client.infer("lenet5", batch)
    results = client.classify_tensor("lenet5", batch, top_k=3)
    assert [len(r) for r in results] == [3, 3]
    for row, top in zip(logits, results, strict=True):
        assert [c.index for c in top] == list(np.argsort(-row)[:3])
        assert [c.score for c in top] == pytest.approx([row[c.index] for c in top], abs=1e-5)
        assert all(isinstance(c, Classification) and c.label for c in top)


def test_classify_real_photos(client: InferenceClient, photos: dict[str, Path]) -> None:
    names = sorted(photos)
    results = client.classify(
        "efficientnet_lite0", [photos[n].read_bytes() for n in names], top_k=5
    )
    assert len(results) == len(names)
    for name, top in zip(names, results, strict=True):
        assert len(top) == 5
        assert [c.score for c in top] == sorted((c.score for c in top), reverse=True)
        assert top[0].index in EXPECTED[name], f"{name}: {top[0]}"


def test_statistics_count_every_row(client: InferenceClient) -> None:
    def count() -> int:
        (stats,) = client.statistics("lenet5")
        return stats.inference_count

    before = count()
    client.infer("lenet5", np.zeros((3, 1, 32, 32), dtype=np.float32))
    assert count() == before + 3
    assert {"lenet5", "efficientnet_lite0"} <= {s.name for s in client.statistics()}


def test_classification_parse_keeps_colons_in_labels() -> None:
    assert Classification.parse(b"-1.5:7:a: b") == Classification(-1.5, 7, "a: b")
    with pytest.raises(ClientError, match="malformed"):
        Classification.parse("nonsense")


def test_api_errors_carry_code_and_server_message(client: InferenceClient) -> None:
    with pytest.raises(ClientError, match="NOT_FOUND: .*no_such_model") as info:
        client.infer("no_such_model", np.zeros((1, 1, 32, 32), dtype=np.float32))
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ClientError, match=r"INVALID_ARGUMENT: input shape \[1, 3, 32, 32\]"):
        client.infer("lenet5", np.zeros((1, 3, 32, 32), dtype=np.float32))
    with pytest.raises(ClientError, match="INVALID_ARGUMENT: .*cannot decode image"):
        client.classify("lenet5", [b"not an image"])
    with pytest.raises(ClientError, match="real numeric array"):
        client.infer("lenet5", np.array([["a"]]))
    with pytest.raises(ClientError, match="at least one image"):
        client.classify("lenet5", [])


def test_unreachable_server(dead_url: str) -> None:
    with InferenceClient(dead_url, timeout=10) as c, pytest.raises(ClientError) as info:
        c.live()
    assert str(info.value) == f"cannot reach server at {dead_url} — is it running?"
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_dynamic_dims_take_the_crop_size() -> None:
    """No exported test model has dynamic H/W, so the CLI's shape rule is checked on stubs."""

    class Stub:
        def metadata(self, model: str, version: str) -> pb.ModelMetadataResponse:
            tensor = pb.ModelMetadataResponse.TensorMetadata(shape=[-1, 3, -1, -1])
            return pb.ModelMetadataResponse(inputs=[tensor])

        def config(self, model: str, version: str) -> mc.ModelConfig:
            config = mc.ModelConfig()
            config.parameters["preprocess.crop_size"].string_value = "160"
            return config

    assert _input_shape(Stub(), "m", "", 2) == [2, 3, 160, 160]  # type: ignore[arg-type]


# --- the command line -------------------------------------------------------------


@pytest.mark.parametrize("send", ["encoded", "pixels", "tensor"])
def test_cli_classify_prints_the_label(
    server: RunningServer, photos: dict[str, Path], send: str
) -> None:
    """The same photo as the file (BYTES), decoded pixels (UINT8) or a tensor (FP32)."""
    proc = cli(
        server.url,
        "classify",
        "--model",
        "efficientnet_lite0",
        "--top-k",
        "3",
        "--send",
        send,
        str(photos["chelsea.png"]),
        str(photos["china.jpg"]),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(photos["chelsea.png"]) and len(lines) == 8
    score, index, label = lines[1].split(maxsplit=2)
    assert label in CAT_LABELS and int(index) in EXPECTED["chelsea.png"]
    assert int(lines[5].split(maxsplit=2)[1]) in EXPECTED["china.jpg"]


def test_phone_photo_is_classified(
    client: InferenceClient, tmp_path: Path, photos: dict[str, Path]
) -> None:
    """The demo's 12 MP sample (stored sideways, EXIF-tagged) answers like its small source."""
    phone = phone_photo(tmp_path)
    assert phone is not None and Image.open(phone).size == (3024, 4032)
    [top] = client.classify("efficientnet_lite0", [phone.read_bytes()], top_k=1)
    assert top[0].index in EXPECTED[PHONE_SOURCE], top


def test_classify_pixels_matches_the_encoded_file(
    client: InferenceClient, photos: dict[str, Path]
) -> None:
    path = photos["coffee.png"]
    pixels = np.asarray(Image.open(path).convert("RGB"))[None]
    [as_pixels] = client.classify_pixels("efficientnet_lite0", pixels, top_k=3)
    [as_file] = client.classify("efficientnet_lite0", [path.read_bytes()], top_k=3)
    assert as_pixels == as_file
    with pytest.raises(ClientError, match="uint8"):
        client.classify_pixels("efficientnet_lite0", pixels.astype(np.float32))


def test_cli_infer_random_and_from_file(server: RunningServer, tmp_path: Path) -> None:
    proc = cli(server.url, "infer", "--model", "lenet5", "--batch", "3", "--random", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "input [3, 1, 32, 32]" in proc.stdout and "output [3, 10]" in proc.stdout
    assert "round trip" in proc.stdout and proc.stdout.count("top-1 index") == 3
    sample = tmp_path / "one.npy"
    np.save(sample, np.zeros((1, 32, 32), dtype=np.float32))  # CHW: the batch axis is added
    proc = cli(server.url, "infer", "--model", "lenet5", "--input", str(sample))
    assert proc.returncode == 0, proc.stderr
    assert "output [1, 10]" in proc.stdout


def test_cli_models_metadata_and_stats(server: RunningServer) -> None:
    proc = cli(server.url, "models")
    assert proc.returncode == 0, proc.stderr
    states = {tuple(line.split()[:3]) for line in proc.stdout.splitlines()[1:]}
    assert {("lenet5", "1", "READY"), ("efficientnet_lite0", "1", "READY")} <= states
    proc = cli(server.url, "metadata", "--model", "lenet5")
    assert proc.returncode == 0 and "input FP32 [-1, 1, 32, 32]" in proc.stdout
    proc = cli(server.url, "stats", "--model", "lenet5")
    assert proc.returncode == 0 and proc.stdout.startswith("lenet5 v1:")


@pytest.mark.parametrize(
    "case", ["not running", "unknown model", "missing file", "corrupt image", "bad npy"]
)
def test_cli_errors_exit_2_without_traceback(
    case: str, server: RunningServer, dead_url: str, photos: dict[str, Path], tmp_path: Path
) -> None:
    cat = str(photos["chelsea.png"])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_bytes(b"not numpy")
    missing = tmp_path / "no" / "such.png"
    url, args, expected = {
        "not running": (dead_url, ["models"], [f"cannot reach server at {dead_url}"]),
        "unknown model": (server.url, ["classify", "-m", "mobilenet_v9", cat], ["mobilenet_v9"]),
        "missing file": (server.url, ["classify", "-m", "lenet5", str(missing)], [str(missing)]),
        "corrupt image": (
            server.url,
            ["classify", "-m", "lenet5", str(corrupt)],
            [str(corrupt), "INVALID_ARGUMENT", "cannot decode image"],
        ),
        "bad npy": (server.url, ["infer", "-m", "lenet5", "--input", str(bad_npy)], [str(bad_npy)]),
    }[case]
    proc = cli(url, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    for text in expected:
        assert text in proc.stderr
