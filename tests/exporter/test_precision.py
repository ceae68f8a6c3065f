"""Reduced precision on the CPU: INT8 (QDQ) and FP16 ONNX, their gates, calibration
images, the exporter's precision options, and an INT8 version served over gRPC.

The TensorRT pieces that need no GPU are checked here too: the optimization
profile arithmetic, the engine's config.pbtxt, the compatibility message and
the clear failure of a tensorrt_plan model on a machine without a GPU.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from engines import BackendConfig, BackendError, create_backend
from engines.gpu import unavailable_reason
from engines.trt import compatibility_problem
from exporter import calibration, quantize
from exporter.cli import main as exporter_main
from exporter.precision import PrecisionOptions, compare
from exporter.samples import EXPECTED
from exporter.trt_build import calibration_batch, engine_config, profile_shapes
from imaging.preprocess import preprocess
from modelrepo.files import to_pbtxt
from modelrepo.spec import Preprocess, load_spec
from protos import grpc_service_pb2 as pb
from tests.kit.serving import ROOT, logits_of, start_server, tensor_request

NO_GPU = unavailable_reason()  # these tests check what a machine without a GPU answers
ON_GPU_HOST = pytest.mark.skipif(
    NO_GPU is None, reason="a GPU is usable here: tests/engines/test_gpu.py"
)
DIGITS = Preprocess(color_mode="L", resize_size=32, crop_size=32, mean=(0.5,), std=(0.5,))


def logits(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from exporter.digits import Recipe, split

    return split(Recipe())


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory, digits_split) -> Path:
    """300 training digits as PNG files in class folders (never the held-out ones)."""
    root = tmp_path_factory.mktemp("digits-calibration")
    x_train, _, y_train, _ = digits_split
    for i, (img, label) in enumerate(zip(x_train[:300], y_train[:300], strict=True)):
        (root / str(label)).mkdir(exist_ok=True)
        (root / str(label) / f"{i:04d}.png").write_bytes(png(img))
    return root


@pytest.fixture(scope="module")
def int8_repo(tmp_path_factory: pytest.TempPathFactory, digit_folder: Path) -> Path:
    """lenet5 version 1 in FP32, version 2 in INT8, both through the command line."""
    repo = tmp_path_factory.mktemp("int8-repo")
    assert exporter_main(["export", "lenet5", "--repository", str(repo)]) == 0
    args = ["export", "lenet5", "--repository", str(repo), "--precision", "int8"]
    assert exporter_main([*args, "--calibration", str(digit_folder)]) == 0
    return repo


def test_lenet_int8_keeps_heldout_accuracy(int8_repo: Path, digits_split) -> None:
    _, x_test, _, y_test = digits_split
    x = np.stack([preprocess(png(img), DIGITS) for img in x_test])
    fp32 = (logits(int8_repo / "lenet5" / "1" / "model.onnx", x).argmax(1) == y_test).mean()
    int8_path = int8_repo / "lenet5" / "2" / "model.onnx"
    int8 = (logits(int8_path, x).argmax(1) == y_test).mean()
    print(f"LeNet held-out accuracy on {len(y_test)} digits: fp32 {fp32:.2%}, int8 {int8:.2%}")
    assert fp32 >= 0.97
    assert fp32 - int8 <= 0.01, f"int8 lost {fp32 - int8:.2%} held-out accuracy"
    ops = {n.op_type for n in onnx.load(str(int8_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # a real QDQ model

    report = json.loads((int8_path.parent / "export.json").read_text())
    prec = report["precision"]
    assert prec["precision"] == "int8" and prec["method"]["format"] == "QDQ"
    assert prec["calibration"]["count"] == 256  # --calibration-limit default, spread over 300
    assert len(prec["calibration"]["sha256"]) == 64
    assert prec["calibration"]["images"][0].startswith("0/")  # relative to the folder
    assert prec["agreement"]["passed"] and prec["agreement"]["top1_agreement"] >= 0.99
    assert report["onnx"]["bytes"] == int8_path.stat().st_size
    spec = load_spec(int8_repo / "lenet5")
    assert spec.platform == "onnxruntime_onnx" and spec.model_file().name == "model.onnx"
    assert spec.config.parameters["model.precision"].string_value == "int8"


def test_lite0_int8_and_fp16_agree_with_fp32_on_the_photos(
    lite0_repo: Path, photos: dict[str, Path], tmp_path: Path
) -> None:
    """Calibrated on scikit-image's other pictures; judged on the held-out photographs."""
    import skimage

    spec = load_spec(lite0_repo / "efficientnet_lite0")
    fp32_path = spec.model_file()
    data_dir = Path(skimage.__file__).parent / "data"
    folder = tmp_path / "calibration"
    folder.mkdir()
    for path in data_dir.glob("*"):
        if path.suffix in (".png", ".jpg") and path.name not in EXPECTED:
            shutil.copy(path, folder / path.name)
    cal = calibration.load(folder, spec.preprocess)
    assert not set(cal.names) & set(photos)
    int8_path = quantize.quantize_int8(fp32_path, tmp_path / "int8.onnx", cal.x)
    fp16_path = quantize.convert_fp16(fp32_path, tmp_path / "fp16.onnx")

    names = sorted(photos)
    x = np.stack([preprocess(photos[n].read_bytes(), spec.preprocess) for n in names])
    ref = logits(fp32_path, x)
    int8 = compare(ref, logits(int8_path, x), names)
    fp16 = compare(ref, logits(fp16_path, x), names, max_rel_err=1e-2)
    print(f"lite0 int8 vs fp32 on {names}: {int8.top1_agreement:.0%}, rel {int8.max_rel_err:.3f}")
    assert int8.passed and int8.top1_agreement == 1.0, int8.reason
    assert fp16.passed and fp16.top1_agreement == 1.0, fp16.reason
    for name, row in zip(names, logits(int8_path, x), strict=True):
        assert int(row.argmax()) in EXPECTED[name], f"int8 misclassifies {name}"
    session = ort.InferenceSession(str(fp16_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == session.get_outputs()[0].type == "tensor(float)"
    assert int8_path.stat().st_size < fp32_path.stat().st_size / 3
    # 7-bit weights: what keeps this agreement on x86 CPUs without VNNI (exporter/quantize.py)
    weights = [
        onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(int8_path)).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
    ]
    assert len(weights) > 40 and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64


def test_int8_version_is_served_over_grpc(int8_repo: Path, tmp_path: Path, digits_split) -> None:
    """The INT8 version serves like any ONNX model; a tensorrt_plan beside it fails clearly."""
    repo = tmp_path / "repo"
    shutil.copytree(int8_repo, repo)
    trt_dir = repo / "lenet5_trt"  # an engine "built elsewhere", on this GPU-less machine
    shutil.copytree(repo / "lenet5", trt_dir)
    config = load_spec(repo / "lenet5").config
    config.name = "lenet5_trt"
    engine_config(config, (1, 32, 32))
    (trt_dir / "config.pbtxt").write_text(to_pbtxt(config))
    (trt_dir / "2" / "model.plan").write_bytes(b"not an engine")

    _, x_test, _, y_test = digits_split
    x = np.stack([preprocess(png(img), DIGITS) for img in x_test[:16]])
    server = start_server(repo, log_dir=tmp_path)
    try:
        stub = server.stub()
        resp = stub.ModelInfer(tensor_request("lenet5", x))
        assert resp.model_version == "2"
        expected = logits(repo / "lenet5" / "2" / "model.onnx", x)
        np.testing.assert_allclose(logits_of(resp), expected, rtol=1e-5, atol=1e-5)
        assert (logits_of(resp).argmax(1) == y_test[:16]).mean() >= 0.9
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
        states = {m.name: m for m in index.models}
        assert states["lenet5"].state == "READY"
        trt = states["lenet5_trt"]
        assert trt.state == "UNAVAILABLE" and "not supported" not in trt.reason, trt.reason
        assert ("NVIDIA GPU" if NO_GPU else "could not deserialize") in trt.reason, trt.reason
    finally:
        assert server.terminate() == 0


def test_calibration_folder_is_read_like_the_server(photos: dict[str, Path], tmp_path: Path):
    pre = Preprocess()
    folder = tmp_path / "imgs"
    (folder / "cats").mkdir(parents=True)
    shutil.copy(photos["chelsea.png"], folder / "cats" / "chelsea.png")
    shutil.copy(photos["coffee.png"], folder / "coffee.PNG")
    shutil.copy(photos["rocket.jpg"], folder / "rocket.jpeg")
    (folder / "notes.txt").write_text("not an image")
    cal = calibration.load(folder, pre)
    assert cal.names == ("cats/chelsea.png", "coffee.PNG", "rocket.jpeg")
    assert cal.x.shape == (3, 3, 224, 224) and cal.x.dtype == np.float32
    expected = preprocess(photos["chelsea.png"].read_bytes(), pre)
    np.testing.assert_array_equal(cal.x[0], expected)  # the server's own preprocessing
    assert calibration.load(folder, pre).sha256 == cal.sha256
    assert calibration.load(folder, pre, limit=2).names == ("cats/chelsea.png", "rocket.jpeg")

    shutil.copy(photos["china.jpg"], folder / "coffee.PNG")  # same name, other content
    assert calibration.load(folder, pre).sha256 != cal.sha256
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(calibration.CalibrationError, match="broken.jpg"):
        calibration.load(folder, pre)
    with pytest.raises(calibration.CalibrationError, match="holds no images"):
        calibration.load(_empty(tmp_path), pre)
    with pytest.raises(calibration.CalibrationError, match="does not exist"):
        calibration.load(tmp_path / "nope", pre)
    samples = calibration.load(calibration.SAMPLES, pre)
    assert set(samples.names) >= set(photos) and "bundled" in samples.source


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    return tmp_path / "empty"


def test_quantize_rejects_bad_calibration(lite0_repo: Path, tmp_path: Path) -> None:
    model = load_spec(lite0_repo / "efficientnet_lite0").model_file()
    bad = {
        "N x C x H x W": np.zeros((3, 224, 224), np.float32),
        "no images": np.zeros((0, 3, 224, 224), np.float32),
        "float32": np.zeros((1, 3, 224, 224), np.uint8),
        r"axis 1: 1 != 3": np.zeros((1, 1, 224, 224), np.float32),
    }
    for message, array in bad.items():
        with pytest.raises(ValueError, match=message):
            quantize.quantize_int8(model, tmp_path / "x.onnx", array)
    assert not (tmp_path / "x.onnx").exists()


def test_compare_names_the_images_that_changed() -> None:
    ref = np.array([[3.0, 1, 0], [0, 2, 1], [1, 0, 4]])
    got = np.array([[2.9, 1, 0], [0, 1, 1.5], [1, 0, 3.9]])
    result = compare(ref, got, ["a.jpg", "b.jpg", "c.jpg"])
    assert result.top1_agreement == pytest.approx(2 / 3) and not result.passed
    assert [d["image"] for d in result.differing] == ["b.jpg"]
    assert result.differing[0]["reference_class"] == 1 and result.differing[0]["got_class"] == 2
    assert "b.jpg" in result.reason and "66.7%" in result.reason
    assert compare(ref, got, ["a", "b", "c"], min_agreement=0.6).passed
    close = compare(ref, ref + 0.01, ["a", "b", "c"], max_rel_err=1e-3)
    assert not close.passed and "relative error" in close.reason
    assert compare(ref, ref, ["a", "b", "c"], max_rel_err=1e-3).passed


def test_profile_arithmetic() -> None:
    p = profile_shapes((3, 224, 224), 16, (4, 8))
    assert (p.min, p.opt, p.max) == ((1, 3, 224, 224), (8, 3, 224, 224), (16, 3, 224, 224))
    assert profile_shapes((1, 32, 32), 8).opt == (8, 1, 32, 32)  # no preference: tune for max
    assert profile_shapes((3, 224, 224), 1, (1,)).to_dict()["max"] == [1, 3, 224, 224]
    for args, message in [
        (((3, -1, -1), 16, (4,)), "fixed C x H x W"),
        (((3, 224, 224), 0, ()), "max_batch_size 0"),
        (((3, 224, 224), 8, (4, 16)), r"\[16\] lie outside the profile 1..8"),
    ]:
        with pytest.raises(ValueError, match=message):
            profile_shapes(*args)
    assert calibration_batch(300, 8) == 8 and calibration_batch(5, 8) == 5
    with pytest.raises(ValueError):
        calibration_batch(0, 8)


def test_engine_config_describes_a_gpu_engine(int8_repo: Path, tmp_path: Path) -> None:
    model = tmp_path / "lenet5"
    shutil.copytree(int8_repo / "lenet5", model)
    spec = load_spec(model)
    engine_config(spec.config, (1, 32, 32))
    (model / "config.pbtxt").write_text(to_pbtxt(spec.config))
    again = load_spec(model)
    assert again.platform == "tensorrt_plan" and again.model_file(2).name == "model.plan"
    assert again.input_dims == (1, 32, 32)
    assert all(g.kind == g.KIND_GPU for g in again.config.instance_group)


def test_engine_compatibility_is_explained() -> None:
    built = {"version": "10.16.1", "gpu": {"name": "NVIDIA A100", "compute_capability": "8.0"}}
    here = {"index": 0, "name": "NVIDIA H100", "compute_capability": "9.0"}
    assert compatibility_problem(built, "10.16.1", {**here, "compute_capability": "8.0"}) == ""
    message = compatibility_problem(built, "10.13.0", here)
    for part in ("TensorRT 10.16.1 built it", "10.13.0", "NVIDIA A100", "8.0", "H100", "9.0"):
        assert part in message
    assert "Rebuild it on this machine" in message
    assert compatibility_problem({}, "10.16.1", here) == ""  # nothing recorded: let TRT decide


@ON_GPU_HOST
def test_tensorrt_backend_without_gpu_says_why(tmp_path: Path) -> None:
    plan = tmp_path / "1" / "model.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"engine bytes")
    backend = create_backend(BackendConfig(model_file=plan, platform="tensorrt_plan"))
    with pytest.raises(BackendError, match="needs an NVIDIA GPU") as err:
        backend.load()
    assert "cannot fall back to the CPU" in str(err.value) and not backend.ready


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "int8"], "needs --calibration DIR"),
        (["--precision", "int8", "--calibration", "/no/such/dir"], "does not exist"),
        pytest.param(["--backend", "tensorrt"], "NVIDIA GPU", marks=ON_GPU_HOST),
        (["--backend", "tensorrt", "--instance-kind", "cpu"], "runs on a GPU"),
        (["--precision", "fp16", "--min-agreement", "0"], "min_agreement 0.0 must lie in"),
        (["--workspace-mib", "1", "--backend", "tensorrt"], "too small"),
    ],
)
def test_bad_precision_options_fail_clearly(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert exporter_main(["export", "lenet5", "--repository", str(repo), *args]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not repo.exists() or not any(repo.iterdir())
    with pytest.raises(SystemExit):
        exporter_main(["export", "lenet5", "--precision", "int4"])


def test_precision_options_validate() -> None:
    assert PrecisionOptions().is_default
    assert not PrecisionOptions(precision="fp16").is_default
    with pytest.raises(ValueError, match="choose from onnxruntime, tensorrt"):
        PrecisionOptions(backend="openvino")  # type: ignore[arg-type]


def test_gpu_check_fails_loudly_without_a_gpu() -> None:
    if NO_GPU is None:
        pytest.skip("this machine has a GPU: make gpu-check runs for real there")
    proc = subprocess.run(
        [sys.executable, "-m", "devtools.gpu_check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "GPU CHECK FAILED" in proc.stderr and "no usable NVIDIA GPU" in proc.stderr
