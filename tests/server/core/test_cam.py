"""Class activation maps through a real server, with the pretrained efficientnet_lite0.

One forward pass per image (the statistics count the photos only), the map is the
server's math on the exported feature map (checked against ONNX Runtime here), its
peak lies in the hand-drawn boxes (exporter/samples.py), hiding the square at the
peak costs the class more than hiding random squares, and its agreement with the
occlusion map of the same photo is reported (Pearson r).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from benchmarks.explain_maps import Explained, hiding_drops, load, peak, pearson
from client.cli import main
from engines import BackendConfig, BackendError, create_backend
from exporter.samples import BOXES, EXPECTED
from imaging.preprocess import preprocess
from modelrepo import keys
from modelrepo.files import read_config, write_config
from protos import grpc_service_pb2 as pb
from server.core.cam import class_maps
from server.core.errors import InvalidArgument
from server.core.explain import OUTPUT, ExplainRequest, check_method
from tests.kit.serving import ServerProcess, served, tensor_request
from tests.kit.triton_child import triton_features
from tests.server.core.test_explain import explain_request, heat_of

LITE0 = "efficientnet_lite0"
NO_CAM = "lite0_nocam"  # the same model exported as with --no-cam
PATCH = STRIDE = 32


@pytest.fixture(scope="module")
def cam_repo(lite0_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("cam-repo")
    shutil.copytree(lite0_repo / LITE0, repo / LITE0)
    shutil.copytree(lite0_repo / LITE0, repo / NO_CAM)
    config = read_config(repo / NO_CAM)
    config.name = NO_CAM
    del config.parameters[keys.CAM_FEATURES_OUTPUT]
    write_config(repo / NO_CAM, config)
    (repo / NO_CAM / "1" / keys.CAM_HEAD_FILE).unlink()
    return repo


@pytest.fixture(scope="module")
def server(cam_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from served(cam_repo, tmp_path_factory.mktemp("cam-server"))


@pytest.fixture(scope="module")
def lite0(cam_repo: Path) -> Explained:
    return load(cam_repo)


def _count(stub, model: str) -> int:
    return (
        stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0].inference_count
    )


def test_cam_peaks_inside_the_object_in_one_pass(
    server: ServerProcess, lite0: Explained, photos: dict[str, Path]
) -> None:
    stub = server.stub()
    names = list(BOXES)
    elements = [photos[n].read_bytes() for n in names]
    before = _count(stub, LITE0)
    resp = stub.ModelInfer(explain_request(LITE0, elements, "cam"), timeout=120)
    assert _count(stub, LITE0) - before == len(names)  # one forward pass, no copies
    logits = np.frombuffer(resp.raw_output_contents[0], dtype="<f4").reshape(len(names), -1)
    heat = heat_of(resp)
    assert heat.shape == (len(names), 224, 224)
    peaks = resp.outputs[1].parameters["explain_peak"].string_param.split(";")
    occlusion = heat_of(
        stub.ModelInfer(explain_request(LITE0, elements, patch=PATCH, stride=STRIDE), timeout=600)
    )
    report = []
    for i, name in enumerate(names):
        image = preprocess(elements[i], lite0.spec.preprocess)
        target = int(logits[i].argmax())
        assert target in EXPECTED[name], name
        # the server's map is W[class] . features, upsampled: the same as in process
        own_logits, features = lite0.with_features(image[None])
        expected = class_maps(lite0.head, features, [target], 224, 224)[0]
        np.testing.assert_allclose(heat[i], expected, atol=1e-3 * np.abs(expected).max())
        # its mean over the feature grid plus the bias is the logit
        grid = np.einsum("c,chw->hw", lite0.head.weight[target], features[0])
        assert abs(grid.mean() + lite0.head.bias[target] - own_logits[0, target]) < 1e-3
        y, x = peak(heat[i])
        assert peaks[i] == f"{y},{x}"
        top, left, bottom, right = BOXES[name]
        assert top <= y < bottom and left <= x < right, (name, (y, x), BOXES[name])
        peak_drop, random_drop = hiding_drops(lite0, image, target, (y, x), PATCH)
        assert peak_drop > random_drop, (name, peak_drop, random_drop)
        report.append(f"{name}: r(occlusion, CAM) = {pearson(occlusion[i], heat[i]):.2f}")
    print("; ".join(report))  # the figures docs/explain.md quotes (benchmarks/explain_maps.py)
    assert pearson(occlusion[1], heat[1]) > 0.5  # coffee: the cup drives both maps


def test_cam_needs_the_models_data(server: ServerProcess) -> None:
    stub = server.stub()
    x = np.zeros((1, 3, 224, 224), np.float32)
    req = tensor_request(NO_CAM, x)
    req.parameters["explain"].string_param = "cam"
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"model '{NO_CAM}' has no class activation maps" in err.value.details()
    assert "['occlusion']" in err.value.details()
    req = tensor_request(LITE0, x)
    req.parameters["explain"].string_param = "cam"
    req.parameters["explain_class"].int64_param = 1000
    before = _count(stub, LITE0)
    with pytest.raises(grpc.RpcError, match="not in 0..999"):
        stub.ModelInfer(req, timeout=60)
    assert _count(stub, LITE0) == before  # refused before it was queued: no forward pass
    req = tensor_request(LITE0, x)
    req.parameters["explain"].string_param = "cam"
    req.parameters["explain_class"].int64_param = 5
    resp = stub.ModelInfer(req, timeout=60)
    assert [o.name for o in resp.outputs] == ["logits", OUTPUT]
    assert len(stub.ModelInfer(tensor_request(NO_CAM, x), timeout=60).outputs) == 1


def test_a_config_naming_a_missing_output_fails_the_load(cam_repo: Path) -> None:
    config = BackendConfig(cam_repo / LITE0 / "1" / "model.onnx", features_output="nope")
    with pytest.raises(BackendError, match="'nope', the model's outputs are"):
        create_backend(config).load()


def test_client_and_tritonclient_ask_for_cam(
    server: ServerProcess, photos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cam.png"
    argv = ["--url", server.url, "explain", "--model", LITE0, "--method", "cam"]
    assert main([*argv, str(photos["coffee.png"]), "-o", str(out)]) == 0
    assert "coffee.png: class" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.size == (224, 224)
    plan = {"url": server.url, "explain_model": LITE0, "explain_method": "cam"}
    seen = triton_features({**plan, "photo": str(photos["coffee.png"])}, tmp_path)["explanation"]
    assert seen["shape"] == [1, 224, 224] and seen["top"] in EXPECTED["coffee.png"]


def test_an_ensemble_refuses_cam_saying_why() -> None:
    with pytest.raises(InvalidArgument, match="ensemble's members each have their own"):
        check_method(ExplainRequest(method="cam"), "lenet5x5", has_cam=False, ensemble=True)
    check_method(ExplainRequest(method="occlusion"), "lenet5x5", has_cam=False, ensemble=True)
    with pytest.raises(InvalidArgument, match="explain_class 10 is not in 0..9"):
        check_method(ExplainRequest(method="occlusion", target=10), "lenet5", False, False, 10)
