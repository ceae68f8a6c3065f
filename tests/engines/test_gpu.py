"""The GPU paths: TensorRT engines (build, gate, backend, gRPC), ONNX Runtime's CUDA and
TensorRT execution providers. Marked ``gpu``; on a machine without a usable NVIDIA GPU,
TensorRT and onnxruntime-gpu they skip with the reason (``make gpu-check`` instead fails).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engines import BackendConfig, BackendError, create_backend
from engines.gpu import unavailable_reason
from exporter.calibration import heldout_digits
from exporter.cli import main as exporter_main
from modelrepo.spec import Preprocess, load_spec
from tests.kit.serving import logits_of, start_server, tensor_request

REASON = unavailable_reason(need_tensorrt=True)
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"{REASON}")]

DIGITS = Preprocess(color_mode="L", resize_size=32, crop_size=32, mean=(0.5,), std=(0.5,))


def ort_logits(path: Path, x: np.ndarray, providers: list) -> tuple[np.ndarray, list[str]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=providers)
    return session.run(None, {"input": x})[0], session.get_providers()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    images = heldout_digits(DIGITS, count=450)
    labels = np.array([int(n.split("digit")[1][0]) for n in images.names])
    return images.x, labels


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lenet5: v1 FP32 ONNX, v2 FP32 engine, v3 FP16 engine, v4 INT8 engine."""
    repo = tmp_path_factory.mktemp("trt-repo")
    base = ["export", "lenet5", "--repository", str(repo)]
    assert exporter_main(base) == 0
    for precision in ("fp32", "fp16"):
        assert exporter_main([*base, "--backend", "tensorrt", "--precision", precision]) == 0
    folder = tmp_path_factory.mktemp("digits")
    from PIL import Image

    from exporter.digits import Recipe, split

    for i, img in enumerate(split(Recipe())[0][:256]):
        Image.fromarray(img, "L").save(folder / f"{i:04d}.png")
    args = [*base, "--backend", "tensorrt", "--precision", "int8", "--calibration", str(folder)]
    assert exporter_main(args) == 0
    return repo


def test_engines_pass_their_gates_and_record_the_build(engines: Path) -> None:
    for version, precision in ((2, "fp32"), (3, "fp16"), (4, "int8")):
        report = json.loads((engines / "lenet5" / str(version) / "export.json").read_text())
        gate, built = report["precision"]["agreement"], report["tensorrt"]
        assert report["precision"]["precision"] == precision and gate["passed"]
        assert built["version"] and built["gpu"]["compute_capability"]
        assert built["profile"] == {"min": [1, 1, 32, 32], "opt": [8, 1, 32, 32],
                                    "max": [16, 1, 32, 32]}  # fmt: skip
        assert Path(built["timing_cache"]).is_file()
        if precision == "fp32":
            assert gate["top1_agreement"] == 1.0 and gate["max_rel_err"] <= 1e-3
        if precision == "int8":
            assert Path(built["calibration_cache"]).is_file()
        assert (engines / "lenet5" / str(version) / "model.onnx").is_file()  # kept for rebuilds
    spec = load_spec(engines / "lenet5")
    assert spec.platform == "tensorrt_plan" and spec.model_file().name == "model.plan"


@pytest.mark.parametrize("version", [2, 3, 4])
def test_backend_runs_every_batch_size_and_matches_onnx(engines: Path, digits, version: int):
    x, labels = digits
    plan = engines / "lenet5" / str(version) / "model.plan"
    backend = create_backend(BackendConfig(model_file=plan, platform="tensorrt_plan"))
    backend.load()
    try:
        assert backend.describe()["max_batch"] == 16
        ref, _ = ort_logits(plan.with_name("model.onnx"), x[:16], ["CPUExecutionProvider"])
        for n in (1, 3, 16):
            out = backend.infer(x[:n])
            assert out.shape == (n, 10) and out.dtype == np.float32
            tol = 1e-3 if version == 2 else 0.1
            assert np.abs(out - ref[:n]).max() <= tol * np.abs(ref[:n]).max()
        with pytest.raises(BackendError, match="accepts 1..16"):
            backend.infer(x[:17])
        preds = np.concatenate(
            [backend.infer(x[i : i + 16]).argmax(1) for i in range(0, len(x), 16)]
        )
        assert (preds == labels).mean() >= 0.97
    finally:
        backend.unload()


def test_engine_from_another_gpu_is_refused(engines: Path, tmp_path: Path) -> None:
    version = tmp_path / "1"
    shutil.copytree(engines / "lenet5" / "3", version)
    report = json.loads((version / "export.json").read_text())
    report["tensorrt"]["gpu"]["compute_capability"] = "1.0"
    report["tensorrt"]["version"] = "9.9.9"
    (version / "export.json").write_text(json.dumps(report))
    backend = create_backend(
        BackendConfig(model_file=version / "model.plan", platform="tensorrt_plan")
    )
    with pytest.raises(BackendError, match="compute capability 1.0") as err:
        backend.load()
    assert "TensorRT 9.9.9 built it" in str(err.value)


def test_engine_served_over_grpc(engines: Path, digits, tmp_path: Path) -> None:
    x, labels = digits
    server = start_server(engines, log_dir=tmp_path)
    try:
        resp = server.stub().ModelInfer(tensor_request("lenet5", x[:16]))
        assert resp.model_version == "4"
        ref, _ = ort_logits(
            engines / "lenet5" / "4" / "model.onnx", x[:16], ["CPUExecutionProvider"]
        )
        assert (logits_of(resp).argmax(1) == ref.argmax(1)).mean() >= 0.9
        assert (logits_of(resp).argmax(1) == labels[:16]).mean() >= 0.9
    finally:
        assert server.terminate() == 0


def _ort_gpu_reason() -> str | None:
    import onnxruntime as ort

    have = ort.get_available_providers()
    if "CUDAExecutionProvider" in have and "TensorrtExecutionProvider" in have:
        return None
    return f"onnxruntime {ort.__version__} has no GPU providers ({have}): run make gpu-setup"


ORT_GPU = pytest.mark.skipif(REASON is None and _ort_gpu_reason() is not None,
                             reason=f"{REASON or _ort_gpu_reason()}")  # fmt: skip


@ORT_GPU
@pytest.mark.parametrize("use_trt_ep", [False, True])
def test_onnxruntime_gpu_providers(engines: Path, digits, use_trt_ep: bool) -> None:
    x, _ = digits
    onnx = engines / "lenet5" / "1" / "model.onnx"
    backend = create_backend(
        BackendConfig(model_file=onnx, instance_kind="gpu", use_tensorrt_ep=use_trt_ep)
    )
    backend.load()
    try:
        got = backend.describe()["providers"]
        want = "TensorrtExecutionProvider" if use_trt_ep else "CUDAExecutionProvider"
        assert got[0] == want, got
        ref, _ = ort_logits(onnx, x[:8], ["CPUExecutionProvider"])
        np.testing.assert_allclose(backend.infer(x[:8]), ref, rtol=1e-3, atol=1e-3)
    finally:
        backend.unload()


@ORT_GPU
def test_fp16_onnx_on_the_cuda_provider(engines: Path, digits, tmp_path: Path) -> None:
    from exporter.precision import compare
    from exporter.quantize import convert_fp16

    x, _ = digits
    onnx = engines / "lenet5" / "1" / "model.onnx"
    fp16 = convert_fp16(onnx, tmp_path / "fp16.onnx")
    ref, _ = ort_logits(onnx, x, ["CPUExecutionProvider"])
    got, providers = ort_logits(fp16, x, ["CUDAExecutionProvider"])
    assert providers[0] == "CUDAExecutionProvider"
    result = compare(ref, got, [str(i) for i in range(len(x))])
    assert result.passed, result.reason
