"""Every family exports to ONNX and passes the parity gate; entries are complete."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exporter.cam import FEATURES_OUTPUT
from exporter.pipeline import ExportRequest, export_model
from modelrepo.spec import load_spec

# One member per family, at a reduced resolution where the architecture allows
# (None: the model's own size). The largest at full size are `heavy`.
FAMILIES = [
    ("lenet5", None),
    ("alexnet", 64),
    ("zfnet", 64),
    ("resnet50", 64),
    ("seresnet50", 64),
    ("mobilenet_v1", 64),
    ("mobilenet_v2", 64),
    ("mobilenet_v3_small", 64),
    ("xception", 96),
    ("efficientnet_b0", 64),
    ("convnext_tiny", 64),
]
# Global average pooling then one linear layer: exported with class activation map data.
CAM = {"googlenet", "inception_v3", "resnet50", "densenet121", "seresnet50", "mobilenet_v1"}
CAM |= {"mobilenet_v2", "xception", "efficientnet_b0", "efficientnet_b7", "resnet18", "resnet152"}
# The slowest exports (make test-all): full-size giants (ViT-B/16 has no smaller input),
# and the three families whose graphs take longest to trace (their CAM splits stay in
# tests/exporter/test_cam_export.py).
HEAVY = [
    ("vgg16", None),
    ("vit_b_16", None),
    ("vgg19", None),
    ("efficientnet_b7", None),
    ("resnet152", None),
    ("googlenet", 64),
    ("inception_v3", 80),
    ("densenet121", 64),
]


def _quiet(_: str) -> None:
    pass


def check_entry(repo: Path, name: str, version: int = 1) -> dict:
    """Assert a complete, consistent repository entry and return its report."""
    model_dir = repo / name
    version_dir = model_dir / str(version)
    for path in (
        model_dir / "config.pbtxt",
        model_dir / "labels.txt",
        version_dir / "model.onnx",
        version_dir / "export.json",
    ):
        assert path.is_file(), path
    report = json.loads((version_dir / "export.json").read_text())
    onnx_bytes = (version_dir / "model.onnx").read_bytes()
    assert report["onnx"]["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert report["onnx"]["opset"] >= 17
    assert all(
        p["passed"] and p["top1_agreement"] == 1.0 and p["max_rel_err"] <= 1e-4
        for p in report["parity"]
    )
    assert all(p["output_spread"] > 1e-6 and p["batch"] >= 2 for p in report["parity"])
    assert report["parity"][0]["batch"] >= 4
    assert report["weights"]["kind"] and report["weights"]["description"]
    for lib in ("torch", "onnx", "onnxruntime"):
        assert report["libraries"][lib] != "not installed"

    spec = load_spec(model_dir)
    assert spec.versions[-1] == version
    assert spec.platform == "onnxruntime_onnx"
    assert len(spec.labels) == report["output"]["shape"][1]
    assert spec.config.parameters["weights.kind"].string_value == report["weights"]["kind"]

    graph = onnx.load(str(version_dir / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input"]
    cam = report["cam"]
    assert [o.name for o in graph.output] == ["logits"] + (
        [FEATURES_OUTPUT] if cam["available"] else []
    )
    assert cam["available"] == (name in CAM), cam
    cam_files = (
        "cam_features_output" in spec.config.parameters,
        (version_dir / "cam_head.npz").is_file(),
    )
    assert cam_files == (cam["available"],) * 2
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch axis must be dynamic"
    return report


@pytest.mark.parametrize(("name", "size"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_exports_with_parity(name: str, size: int | None, tmp_path: Path) -> None:
    result = export_model(
        ExportRequest(model=name, weights="random", repository=tmp_path, input_size=size),
        progress=_quiet,
    )
    report = check_entry(tmp_path, name)
    assert result.version == 1 and json.loads(json.dumps(result.report)) == report
    assert report["params"] == report["reference_params"]
    # By default H and W are fixed at the export size: Triton's image_client.py reads them.
    assert list(load_spec(tmp_path / name).input_dims) == report["input"]["exported_at_size"]
    assert report["input"]["shape"] == [-1, *report["input"]["exported_at_size"]]

    # The exported file serves other batch sizes than it was traced with.
    c, h, w = report["input"]["exported_at_size"]
    session = ort.InferenceSession(
        str(result.path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(0).standard_normal((3, c, h, w)).astype(np.float32)
    assert session.run(None, {"input": x})[0].shape == (3, report["output"]["shape"][1])


@pytest.mark.heavy
@pytest.mark.parametrize(("name", "size"), HEAVY, ids=[f[0] for f in HEAVY])
def test_slowest_exports_with_parity(name: str, size: int | None, tmp_path: Path) -> None:
    export_model(
        ExportRequest(model=name, weights="random", repository=tmp_path, input_size=size),
        progress=_quiet,
    )
    check_entry(tmp_path, name)


def test_dynamic_hw_is_exported_where_allowed(tmp_path: Path) -> None:
    export_model(
        ExportRequest(model="resnet18", repository=tmp_path, input_size=64, dynamic_spatial=True),
        progress=_quiet,
    )
    report = check_entry(tmp_path, "resnet18")
    assert report["input"]["shape"] == [-1, 3, -1, -1]
    assert [p["input_shape"][2] for p in report["parity"]] == [64, 96]  # two sizes checked
    spec = load_spec(tmp_path / "resnet18")
    assert spec.input_dims == (3, -1, -1)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v2"])  # without, with CAM
def test_torchscript_exporter_also_passes(name: str, tmp_path: Path) -> None:
    from exporter.onnx_export import OnnxOptions

    export_model(
        ExportRequest(
            model=name,
            repository=tmp_path,
            input_size=64,
            onnx=OnnxOptions(exporter="torchscript", simplify=False),
        ),
        progress=_quiet,
    )
    report = check_entry(tmp_path, name)
    assert report["onnx"]["exporter"] == "torchscript" and not report["onnx"]["simplified"]
