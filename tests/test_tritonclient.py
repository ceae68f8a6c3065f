"""The server, driven end to end by NVIDIA's own client, ``tritonclient.grpc``.

A real server process serves a repository holding efficientnet_lite0 (genuine
ImageNet weights) and lenet5 (trained on scikit-learn's digits). tritonclient
cannot be imported here (its generated protobuf modules and ours define the
same ``inference.*`` names: see test_protocol.py), so one child interpreter
runs ``tests/triton_session.py``, which uses only tritonclient, numpy and
Pillow, and prints what it observed as JSON; the tests below assert on that
document, with onnxruntime in this process as the numerical reference.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format

from exporter.samples import EXPECTED
from protos import model_config_pb2 as mc
from tests.serving import start_server

ROOT = Path(__file__).resolve().parents[1]
SESSION = Path(__file__).with_name("triton_session.py")
LENET = "lenet5"
LITE0 = "efficientnet_lite0"
DIGIT_ROWS = slice(0, 1800, 150)  # 12 digits spread over the set


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, lite0_repo: Path) -> Path:
    """efficientnet_lite0 (the session-wide pretrained export) and a freshly trained lenet5."""
    from exporter.pipeline import ExportRequest, export_model

    repo = tmp_path_factory.mktemp("triton-repo")
    shutil.copytree(lite0_repo / LITE0, repo / LITE0)
    export_model(ExportRequest(model=LENET, repository=repo), progress=lambda _: None)
    return repo


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m server`` on ports the OS picks; its URL."""
    srv = start_server(repository, log_dir=tmp_path_factory.mktemp("triton-server"))
    yield srv.url
    code = srv.terminate(timeout=60)
    assert code == 0, f"exit code {code} after SIGTERM:\n{srv.output()[-4000:]}"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """lenet5 inputs as its config describes them: grey 32x32, (x/255 - 0.5) / 0.5; labels."""
    from exporter.digits import digit_images

    images, labels = digit_images()
    x = (images[DIGIT_ROWS].astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x[:, None]), labels[DIGIT_ROWS]


@pytest.fixture(scope="module")
def report(
    server: str,
    digits: tuple[np.ndarray, np.ndarray],
    photos: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Run the tritonclient session once against the server; its JSON report."""
    folder = tmp_path_factory.mktemp("triton-session")
    np.save(folder / "digits.npy", digits[0])
    plan = {
        "url": server,
        "digits": str(folder / "digits.npy"),
        "photos": {name: str(path) for name, path in photos.items()},
    }
    (folder / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.run(
        [sys.executable, str(SESSION), str(folder / "plan.json")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def lenet_reference(repository: Path):
    """lenet5's exported ONNX model run in this process: x -> logits."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(repository / LENET / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.asarray(x, dtype=np.float32)})[0]


def labels_of(repository: Path, model: str) -> list[str]:
    return (repository / model / "labels.txt").read_text().splitlines()


def parse(entry: str) -> tuple[float, int, str]:
    """A classification string "score:index:label"."""
    score, index, label = entry.split(":", 2)
    return float(score), int(index), label


def assert_close(got: Any, want: np.ndarray, atol: float = 1e-4) -> None:
    got = np.asarray(got, dtype=np.float32)
    assert got.shape == want.shape
    assert float(np.max(np.abs(got - want))) <= atol


# ------------------------------------------------------------------ health and metadata


def test_session_is_quick(report: dict[str, Any]) -> None:
    assert report["seconds"] < 30


def test_server_and_models_are_live_and_ready(report: dict[str, Any]) -> None:
    health = report["health"]
    assert health["live"] is True
    assert health["ready"] is True
    assert health["model_ready"] == {LENET: True, LITE0: True}
    assert health["lenet5_v1_ready"] is True
    assert health["lenet5_v9_ready"] is False
    assert health["unknown_ready"] is False


def test_server_metadata(report: dict[str, Any]) -> None:
    meta = report["health"]["server_metadata"]
    assert meta["name"] and meta["version"]
    assert {"classification", "model_repository", "statistics", "model_configuration"} <= set(
        meta["extensions"]
    )


@pytest.mark.parametrize(
    ("model", "dims", "classes"), [(LENET, [1, 32, 32], 10), (LITE0, [3, 224, 224], 1000)]
)
def test_model_metadata(report: dict[str, Any], model: str, dims: list[int], classes: int) -> None:
    meta = report["health"]["metadata"][model]
    assert meta["name"] == model
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == [
        ("input", "FP32", [-1, *dims])
    ]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["outputs"]] == [
        ("logits", "FP32", [-1, classes])
    ]


@pytest.mark.parametrize("model", [LENET, LITE0])
def test_model_config_is_the_repository_config(
    report: dict[str, Any], repository: Path, model: str
) -> None:
    """What tritonclient reads is config.pbtxt, plus the server's own runtime.* parameters."""
    served = dict(report["health"]["config"][model])
    runtime = {k: v for k, v in served["parameters"].items() if k.startswith("runtime.")}
    assert runtime["runtime.backend"] == {"string_value": "onnxruntime"}
    served["parameters"] = {k: v for k, v in served["parameters"].items() if k not in runtime}
    on_disk = text_format.Parse((repository / model / "config.pbtxt").read_text(), mc.ModelConfig())
    assert served == json_format.MessageToDict(on_disk, preserving_proto_field_name=True)
    assert served["max_batch_size"] == 16
    assert served["output"][0]["label_filename"] == "labels.txt"


def test_repository_index(report: dict[str, Any]) -> None:
    assert report["health"]["index"] == [
        {"name": LITE0, "version": "1", "state": "READY"},
        {"name": LENET, "version": "1", "state": "READY"},
    ]


# ------------------------------------------------------------------ lenet5: raw FP32 tensors


def test_lenet_logits_match_onnxruntime(
    report: dict[str, Any], digits: tuple[np.ndarray, np.ndarray], lenet_reference
) -> None:
    x, labels = digits
    lenet = report["lenet"]
    assert lenet["response"] == {
        "model_name": LENET,
        "model_version": "1",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [str(len(x)), "10"]}],
    }
    assert lenet["logits_dtype"] == "float32"
    want = lenet_reference(x)
    assert_close(lenet["logits"], want)
    # A trained network, not just matching numbers: the digits are recognised.
    assert (np.argmax(lenet["logits"], axis=1) == labels).sum() >= len(labels) - 1


def test_lenet_classification_strings(
    report: dict[str, Any], digits: tuple[np.ndarray, np.ndarray], lenet_reference, repository
) -> None:
    want = lenet_reference(digits[0][:3])
    labels = labels_of(repository, LENET)
    rows = [[parse(e) for e in row] for row in report["lenet"]["top3"]]
    assert [[i for _, i, _ in row] for row in rows] == np.argsort(-want, axis=1)[:, :3].tolist()
    for row, logits in zip(rows, want, strict=True):
        for score, index, label in row:
            assert label == labels[index]
            assert score == pytest.approx(float(logits[index]), abs=1e-5)


def test_request_options_pass_through(
    report: dict[str, Any], digits: tuple[np.ndarray, np.ndarray], lenet_reference
) -> None:
    """request_id echoed, model_version honoured, gzip and custom headers accepted."""
    options = report["lenet"]["options"]
    assert options["id"] == "req-42"
    assert options["model_version"] == "1"
    assert_close(options["logits"], lenet_reference(digits[0][:2]))


def test_sixteen_threads_each_get_their_own_rows(
    report: dict[str, Any], digits: tuple[np.ndarray, np.ndarray], lenet_reference
) -> None:
    threaded = report["lenet"]["threaded"]
    assert len(threaded) == 16
    for answer in threaded:
        assert answer["ok"], answer
        start, stop = answer["slice"]
        assert_close(answer["value"], lenet_reference(digits[0][start:stop]))


def test_async_infer_callbacks(
    report: dict[str, Any], digits: tuple[np.ndarray, np.ndarray], lenet_reference
) -> None:
    lenet = report["lenet"]
    assert lenet["async_completed"]
    for index, answer in enumerate(lenet["async"]):
        assert answer["ok"], answer
        assert answer["id"] == f"async-{index}"
        assert_close(answer["value"], lenet_reference(digits[0][index : index + 1]))


def test_statistics_count_the_successful_inferences(report: dict[str, Any]) -> None:
    lenet = report["lenet"]
    before, after = lenet["stats_before"], lenet["stats_after"]
    assert after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == lenet["rows_ok"]
    assert after["success"] - before["success"] == lenet["requests_ok"]
    assert after["fail"] == before["fail"]
    executions = after["execution_count"] - before["execution_count"]
    assert 1 <= executions <= lenet["requests_ok"]
    assert after["compute_infer"] == after["execution_count"]
    # Per batch size, executions; together they hold every inference.
    assert (
        sum(int(size) * n for size, n in after["batch_stats"].items()) == (after["inference_count"])
    )
    assert sum(after["batch_stats"].values()) == after["execution_count"]
    assert max(int(size) for size in after["batch_stats"]) <= 16
    start_ms, end_ms = report["wall_ms"]
    assert start_ms - 1000 <= after["last_inference"] <= end_ms + 1000  # ms since the epoch


# ------------------------------------------------------------------ efficientnet_lite0: photos


def test_photos_top5_from_encoded_bytes(report: dict[str, Any], repository: Path) -> None:
    lite0 = report["lite0"]
    labels = labels_of(repository, LITE0)
    assert lite0["bytes_datatype"] == "BYTES"
    assert lite0["bytes_shape"] == [len(lite0["names"]), 5]
    assert lite0["bytes_logits_shape"] == [len(lite0["names"]), 1000]
    for name, row in zip(lite0["names"], lite0["bytes_top5"], strict=True):
        entries = [parse(e) for e in row]
        assert len({i for _, i, _ in entries}) == 5
        scores = [s for s, _, _ in entries]
        assert scores == sorted(scores, reverse=True)
        _, top1, label = entries[0]
        assert top1 in EXPECTED[name], f"{name}: {row}"
        assert label == labels[top1]
        assert all(text == labels[i] for _, i, text in entries)
    # [N, 1] is accepted as well as [N].
    assert lite0["column_top1"] == [lite0["bytes_top5"][0][:1]]


def test_photos_from_client_preprocessed_tensors(report: dict[str, Any]) -> None:
    """Preprocessing done by the client, from the config's parameters, agrees with the server's."""
    lite0 = report["lite0"]
    for name, row in zip(lite0["names"], lite0["tensor_top5"], strict=True):
        assert parse(row[0])[1] in EXPECTED[name], f"{name}: {row}"
    top = [[parse(e)[1] for e in row] for row in lite0["tensor_top5"]]
    assert top == [[parse(e)[1] for e in row] for row in lite0["bytes_top5"]]
    assert lite0["tensor_vs_bytes_max_abs_diff"] <= 1e-3


def test_photo_statistics(report: dict[str, Any]) -> None:
    lite0 = report["lite0"]
    before, after = lite0["stats_before"], lite0["stats_after"]
    assert after["inference_count"] - before["inference_count"] == lite0["images_ok"]
    assert after["compute_input"] - before["compute_input"] == lite0["bytes_requests_ok"]
    assert after["fail"] == before["fail"]


# ------------------------------------------------------------------ errors

ERRORS = {
    # key in the report: (gRPC status, fragments the message must hold)
    "wrong_shape": ("INVALID_ARGUMENT", ["[2, 1, 28, 28]", "[-1, 1, 32, 32]", "batch"]),
    "wrong_rank": ("INVALID_ARGUMENT", ["[1, 32, 32]", "[-1, 1, 32, 32]"]),
    "int32": ("INVALID_ARGUMENT", ["INT32", "FP32"]),
    "class_count_too_large": ("INVALID_ARGUMENT", ["11", "10 classes"]),
    "unknown_output": ("INVALID_ARGUMENT", ["probs", "logits"]),
    "batch_too_large": ("INVALID_ARGUMENT", ["17", "max_batch_size 16"]),
    "unknown_input": ("INVALID_ARGUMENT", ["image", "input"]),
    "unknown_model": ("NOT_FOUND", ["no_such_model"]),
    "unknown_version": ("NOT_FOUND", ["lenet5", "7"]),
    "unknown_model_metadata": ("NOT_FOUND", ["no_such_model"]),
    "unknown_model_config": ("NOT_FOUND", ["no_such_model"]),
    "unknown_model_statistics": ("NOT_FOUND", ["no_such_model"]),
    "not_an_image": ("INVALID_ARGUMENT", ["element 0", "cannot decode image"]),
    "truncated_jpeg": ("INVALID_ARGUMENT", ["element 0", "truncated"]),
    "cuda_shared_memory": ("UNIMPLEMENTED", ["CudaSharedMemoryStatus"]),
    "stream": ("UNIMPLEMENTED", ["ModelStreamInfer"]),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_reach_tritonclient_with_status_and_message(
    report: dict[str, Any], case: str
) -> None:
    errors = report["errors"]
    answer = errors["lenet"].get(case) or errors[case]
    status, fragments = ERRORS[case]
    assert answer["ok"] is False, answer
    assert answer["status"] == f"StatusCode.{status}", answer
    for fragment in fragments:
        assert fragment in answer["message"], answer


def test_failed_requests_count_as_failures(report: dict[str, Any]) -> None:
    errors = report["errors"]
    before, after = errors["stats_before"], errors["stats_after"]
    assert after["fail"] - before["fail"] == errors["lenet_failures"]
    assert after["success"] == before["success"]


def test_failed_requests_are_not_counted_as_inferences(report: dict[str, Any]) -> None:
    errors = report["errors"]
    before, after = errors["stats_before"], errors["stats_after"]
    assert after["inference_count"] == before["inference_count"]
    assert after["execution_count"] == before["execution_count"]


# ------------------------------------------------------------------ model control


def test_unload_and_load_at_run_time(
    report: dict[str, Any], digits: tuple[np.ndarray, np.ndarray], lenet_reference
) -> None:
    life = report["lifecycle"]
    assert life["unload"] == {"ok": True, "value": None}
    assert life["ready_after_unload"] is False
    assert {"name": LENET, "state": "UNAVAILABLE", "reason": "unloaded"} in life[
        "index_after_unload"
    ]
    assert life["infer_after_unload"]["status"] == "StatusCode.UNAVAILABLE"
    assert life["load"] == {"ok": True, "value": None}
    assert life["ready_after_load"] is True
    assert life["infer_after_load"]["ok"]
    assert_close(life["infer_after_load"]["value"], lenet_reference(digits[0][:1]))
    assert life["unload_unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert life["load_unknown"]["ok"] is False
    assert "no_such_model" in life["load_unknown"]["message"]


def test_failed_load_of_unknown_model_leaves_no_trace(report: dict[str, Any]) -> None:
    life = report["lifecycle"]
    assert "no_such_model" not in {m["name"] for m in life["index_after_load_unknown"]}
    assert life["infer_unknown_after_load_unknown"]["status"] == "StatusCode.NOT_FOUND"


# ------------------------------------------------------------------ system shared memory


def test_shared_memory_round_trip_with_tritonclient(
    report: dict[str, Any], digits: tuple[np.ndarray, np.ndarray], lenet_reference
) -> None:
    session = report["shared_memory"]
    regions = session["status"].get("regions", {})
    assert set(regions) == {"lenet_io"}
    assert session["shape"] == [4, 10]
    assert_close(session["logits"], lenet_reference(digits[0][:4]))
    assert session["register_twice"]["status"] == "StatusCode.ALREADY_EXISTS"
    assert not session["status_after_unregister"].get("regions")
    gone = session["infer_after_unregister"]
    assert gone["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "'lenet_io' is not registered" in gone["message"]
