"""config.pbtxt is a valid Triton ModelConfig; the readers reject broken entries clearly."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

from exporter.config import ModelCfg
from exporter.triton_config import model_config
from modelrepo.files import model_folders, to_pbtxt
from modelrepo.serving import ServingConfig
from modelrepo.spec import ModelConfigError, load_spec
from protos import model_config_pb2 as mc

ROOT = Path(__file__).resolve().parents[2]


def _config(**serving: object) -> mc.ModelConfig:
    cfg = ModelCfg(name="toy", family="Toy", year=2024, source="ours")
    return model_config(
        cfg,
        ServingConfig(**serving),
        input_hw=(224, 224),
        dynamic_hw=False,
        parameters={"preprocess.crop_size": "224"},
    )


def test_pbtxt_round_trips_with_triton_field_names() -> None:
    text = to_pbtxt(
        _config(
            max_batch_size=8, preferred_batch_sizes=(2, 4), instance_kind="cpu", instance_count=2
        )
    )
    for expected in (
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 8",
        "dims: 224",
        "preferred_batch_size: 2",
        "max_queue_delay_microseconds: 1000",
        "kind: KIND_CPU",
        "count: 2",
        'label_filename: "labels.txt"',
        "format: FORMAT_NCHW",
        "data_type: TYPE_FP32",
    ):
        assert expected in text
    parsed = text_format.Parse(text, mc.ModelConfig())
    assert parsed == _config(
        max_batch_size=8, preferred_batch_sizes=(2, 4), instance_kind="cpu", instance_count=2
    )


def test_hand_written_triton_config_parses() -> None:
    """A config as a Triton user writes it (with `backend` and optimization) is readable."""
    text = """
name: "resnet"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 1000 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
instance_group [ { count: 1 kind: KIND_GPU } ]
optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" } ] } }
"""
    config = text_format.Parse(text, mc.ModelConfig())
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert (
        config.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    )


def test_broken_config_names_file_and_line(tmp_path: Path) -> None:
    model = tmp_path / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "broken"\nmax_batch_size: "eight"\n')
    with pytest.raises(ModelConfigError) as err:
        load_spec(model)
    assert "config.pbtxt" in str(err.value) and "2:" in str(err.value)


def test_name_must_match_folder(tmp_path: Path) -> None:
    model = tmp_path / "a"
    model.mkdir()
    (model / "config.pbtxt").write_text(to_pbtxt(_config()))  # name: "toy"
    with pytest.raises(ModelConfigError, match="differs from its folder"):
        load_spec(model)


def test_hidden_staging_folders_are_not_models(tmp_path: Path) -> None:
    for name in ("toy", ".staging-x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(to_pbtxt(_config()))
    assert model_folders(tmp_path) == ["toy"]


# The same protoc invocations as `make proto`.
PROTOC_JOBS = {
    "model_config.proto": ["--python_out={out}", "--pyi_out={out}"],
    "grpc_service.proto": ["--python_out={out}", "--pyi_out={out}", "--grpc_python_out={out}"],
}


def test_generated_protobuf_code_is_up_to_date(tmp_path: Path) -> None:
    for proto, flags in PROTOC_JOBS.items():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{ROOT}",
                *(flag.format(out=tmp_path) for flag in flags),
                str(ROOT / "protos" / proto),
            ],
            check=True,
        )
    generated = sorted(p.name for p in (tmp_path / "protos").glob("*.py"))
    assert generated == [
        "grpc_service_pb2.py",
        "grpc_service_pb2_grpc.py",
        "model_config_pb2.py",
    ]
    stale = [
        name
        for name in generated
        if not (ROOT / "protos" / name).is_file()
        or not filecmp.cmp(tmp_path / "protos" / name, ROOT / "protos" / name, shallow=False)
    ]
    assert not stale, f"{stale} differ from their .proto: run `make proto`"


def test_server_package_never_imports_torch() -> None:
    code = (
        "import sys, modelrepo.spec, imaging.preprocess; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
