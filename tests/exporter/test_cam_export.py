"""CAM data at export: which families split into features -> pooled linear head, and the
repository files the server reads (modelrepo/cam.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporter import cam
from exporter.cli import _request, build_parser
from exporter.registry import build_model, get_cfg
from modelrepo import keys
from modelrepo.cam import CamDataError, read_head, write_head
from modelrepo.files import read_config

# one model per split in exporter/cam.py, at a small input to keep the suite quick
SPLIT = {
    "resnet18": 64,
    "seresnet50": 64,
    "densenet121": 64,
    "mobilenet_v1": 64,
    "mobilenet_v2": 64,
    "efficientnet_b0": 64,
    "efficientnet_lite0": 224,
    "googlenet": 64,
    "inception_v3": 96,
    "xception": 96,
}
NO_CAM = ["lenet5", "alexnet", "mobilenet_v3_small", "convnext_tiny"]


@pytest.mark.parametrize("name", sorted(SPLIT))
@torch.no_grad()
def test_split_gives_the_models_own_logits(name: str) -> None:
    model = build_model(name)
    found = cam.split_model(model)
    assert isinstance(found, cam.CamSplit), found
    x = torch.randn(2, get_cfg(name).channels, SPLIT[name], SPLIT[name])
    logits, features = cam.CamExport(model, found)(x)
    expected = model(x)
    assert features.ndim == 4 and features.shape[1] == found.head.in_features
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("name", NO_CAM)
def test_other_heads_get_no_cam_and_say_why(name: str) -> None:
    found = cam.split_model(build_model(name))
    assert isinstance(found, str) and found, found
    model = build_model("mobilenet_v2")
    assert cam.prepare(model, False, "onnxruntime") == (model, "exported with --no-cam")
    exported, why = cam.prepare(model, True, "tensorrt")
    assert exported is model and "TensorRT" in str(why)


def test_lite0_export_holds_the_feature_map_and_the_head(lite0_repo: Path) -> None:
    model_dir = lite0_repo / "efficientnet_lite0"
    config = read_config(model_dir)
    assert config.parameters[keys.CAM_FEATURES_OUTPUT].string_value == cam.FEATURES_OUTPUT
    assert [o.name for o in config.output] == ["logits"]  # the feature map is no served output
    head = read_head(config, model_dir / "1")
    assert head is not None and head.weight.shape == (1000, 1280) and head.bias.shape == (1000,)
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits", cam.FEATURES_OUTPUT]
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    logits, features = session.run(None, {"input": x})
    assert features.shape == (2, 1280, 7, 7)
    pooled = features.mean(axis=(2, 3)) @ head.weight.T + head.bias
    np.testing.assert_allclose(pooled, logits, rtol=0, atol=1e-4 * np.abs(logits).max())


def test_a_head_that_does_not_fit_is_refused(lite0_repo: Path, tmp_path: Path) -> None:
    config = read_config(lite0_repo / "efficientnet_lite0")
    with pytest.raises(CamDataError, match="cannot be read"):
        read_head(config, tmp_path)
    write_head(tmp_path, np.zeros((10, 1280)), np.zeros(10))
    with pytest.raises(CamDataError, match="10 classes, the model's output has 1000"):
        read_head(config, tmp_path)
    with pytest.raises(CamDataError, match=r"bias \[classes\]"):
        write_head(tmp_path, np.zeros((10, 4)), np.zeros(9))


def test_no_cam_flag_reaches_the_export_request() -> None:
    for extra, wanted in (([], True), (["--no-cam"], False)):
        args = build_parser().parse_args(["export", "mobilenet_v2", *extra])
        assert _request(args, "mobilenet_v2").cam is wanted
