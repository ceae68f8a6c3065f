"""Occlusion explanations through a real server, checked against the photos' content.

The boxes (exporter/samples.py) were drawn by hand on the 224x224 centre crops the
server makes of the bundled photos: (top, left, bottom, right) around the object.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from client.cli import main
from exporter.samples import BOXES, EXPECTED
from imaging.preprocess import preprocess
from modelrepo.spec import load_spec
from protos import grpc_service_pb2 as pb
from server.core.explain import OUTPUT, positions
from tests.kit.serving import ServerProcess, served, tensor_request
from tests.kit.stress import image_request
from tests.kit.triton_child import triton_features

LITE0 = "efficientnet_lite0"
PATCH = STRIDE = 32  # 7x7 occluded copies per photo: the default-suite budget


@pytest.fixture(scope="module")
def server(lite0_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from served(lite0_repo, tmp_path_factory.mktemp("explain-server"))


def explain_request(
    model: str, elements: list[bytes], method: str = "occlusion", **params: int
) -> pb.ModelInferRequest:
    req = image_request(elements)
    req.model_name = model
    req.parameters["explain"].string_param = method
    for key, value in params.items():
        req.parameters[f"explain_{key}"].int64_param = value
    return req


def heat_of(resp: pb.ModelInferResponse) -> np.ndarray:
    index = [o.name for o in resp.outputs].index(OUTPUT)
    shape = list(resp.outputs[index].shape)
    return np.frombuffer(resp.raw_output_contents[index], dtype="<f4").reshape(shape)


def test_occlusion_peaks_inside_the_object(
    server: ServerProcess, lite0_repo: Path, photos: dict[str, Path]
) -> None:
    stub = server.stub()
    names = list(BOXES)
    elements = [photos[n].read_bytes() for n in names]
    before = stub.ModelStatistics(pb.ModelStatisticsRequest(name=LITE0)).model_stats[0]
    resp = stub.ModelInfer(
        explain_request(LITE0, elements, patch=PATCH, stride=STRIDE), timeout=600
    )
    after = stub.ModelStatistics(pb.ModelStatisticsRequest(name=LITE0)).model_stats[0]
    copies = len(positions(224, PATCH, STRIDE)) ** 2
    # the photos and every occluded copy went through the model's batcher
    assert after.inference_count - before.inference_count == len(names) * (1 + copies)
    logits = np.frombuffer(resp.raw_output_contents[0], dtype="<f4").reshape(len(names), -1)
    heat = heat_of(resp)
    assert heat.shape == (len(names), 224, 224)
    session = ort.InferenceSession(
        str(lite0_repo / LITE0 / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    pre = load_spec(lite0_repo / LITE0).preprocess
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        assert int(logits[i].argmax()) in EXPECTED[name], name
        y, x = np.unravel_index(int(heat[i].argmax()), heat[i].shape)
        top, left, bottom, right = BOXES[name]
        assert top <= y < bottom and left <= x < right, (name, (y, x), BOXES[name])
        # hiding the hottest square costs the class more than hiding random squares
        image = preprocess(elements[i], pre)
        target = int(logits[i].argmax())
        y0, x0 = min(y, 224 - PATCH), min(x, 224 - PATCH)  # the hottest square's corner
        spots = [(y0, x0)] + [tuple(rng.integers(0, 224 - PATCH, 2)) for _ in range(12)]
        batch = np.repeat(image[None], len(spots), axis=0)
        for k, (sy, sx) in enumerate(spots):
            batch[k, :, sy : sy + PATCH, sx : sx + PATCH] = 0.0
        out = session.run(None, {"input": batch})[0]
        prob = np.exp(out - out.max(1, keepdims=True))
        prob = prob[:, target] / prob.sum(1)
        assert prob[0] < np.mean(prob[1:]), (name, prob[0], prob[1:])


def test_bad_explanation_parameters_are_invalid_argument(server: ServerProcess) -> None:
    stub = server.stub()
    x = np.zeros((1, 3, 224, 224), np.float32)
    for params, words in (
        ({"patch": 300}, "exceeds"),
        ({"patch": 2, "stride": 1}, "limit"),
        ({"class": 1000}, "not in 0..999"),
    ):
        req = tensor_request(LITE0, x)
        req.parameters["explain"].string_param = "occlusion"
        for key, value in params.items():
            req.parameters[f"explain_{key}"].int64_param = value
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in err.value.details(), err.value.details()
    req = tensor_request(LITE0, x)
    req.parameters["explain"].string_param = "gradcam"
    with pytest.raises(grpc.RpcError, match="choose from"):
        stub.ModelInfer(req, timeout=60)
    req = tensor_request(LITE0, x)  # the server still answers, explanation asked by output name
    req.parameters["explain"].string_param = "occlusion"
    req.parameters["explain_stride"].int64_param = 112
    req.outputs.add(name=OUTPUT)
    resp = stub.ModelInfer(req, timeout=60)
    assert [o.name for o in resp.outputs] == ["logits", OUTPUT]
    req = tensor_request(LITE0, x)
    req.outputs.add(name="logits")
    assert len(stub.ModelInfer(req, timeout=60).outputs) == 1


def test_client_explain_writes_the_overlay(
    server: ServerProcess, photos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "heat.png"
    argv = ["--url", server.url, "--timeout", "300", "explain", "--model", LITE0]
    code = main([*argv, str(photos["rocket.jpg"]), "--stride", "56", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rocket.jpg: class" in printed and "heat map peak" in printed
    with Image.open(out) as image:
        assert image.size == (224, 224) and image.mode == "RGB"


def test_tritonclient_asks_with_parameters(
    server: ServerProcess, photos: dict[str, Path], tmp_path: Path
) -> None:
    plan = {"url": server.url, "explain_model": LITE0, "photo": str(photos["coffee.png"])}
    seen = triton_features(plan, tmp_path)["explanation"]
    assert seen["shape"] == [1, 224, 224]
    assert seen["top"] in EXPECTED["coffee.png"]


def test_occlusion_squares_cover_the_whole_side() -> None:
    assert positions(224, 32, 32) == [0, 32, 64, 96, 128, 160, 192]
    assert positions(224, 32, 56) == [0, 56, 112, 168, 192]  # the last one ends at the edge
    assert positions(32, 32, 16) == [0]
