"""The server, driven end to end by NVIDIA's own client, ``tritonclient.grpc``:
health, metadata, lenet5's raw tensors and efficientnet_lite0 on real photos.

A real server process serves a repository holding efficientnet_lite0 (genuine
ImageNet weights) and lenet5 (trained on scikit-learn's digits). tritonclient
cannot be imported here (its generated protobuf modules and ours define the
same ``inference.*`` names: see test_protocol.py), so one child interpreter
runs ``tests/kit/triton_session.py``, which uses only tritonclient, numpy and
Pillow, and prints what it observed as JSON; the tests below assert on that
document, with onnxruntime in this process as the numerical reference. The
server, the session and the reference are session-scoped fixtures in
conftest.py, shared with test_tritonclient_control.py (errors, model control,
shared memory, streaming), so the session runs once per pytest run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format

from exporter.samples import EXPECTED
from protos import model_config_pb2 as mc
from tests.kit.triton_helpers import LENET, LITE0, Digits, Reference, assert_close, labels_of, parse

# ------------------------------------------------------------------ health and metadata


def test_session_is_quick(triton_report: dict[str, Any]) -> None:
    assert triton_report["seconds"] < 30


def test_server_and_models_are_live_and_ready(triton_report: dict[str, Any]) -> None:
    health = triton_report["health"]
    assert health["live"] is True
    assert health["ready"] is True
    assert health["model_ready"] == {LENET: True, LITE0: True}
    assert health["lenet5_v1_ready"] is True
    assert health["lenet5_v9_ready"] is False
    assert health["unknown_ready"] is False


def test_server_metadata(triton_report: dict[str, Any]) -> None:
    meta = triton_report["health"]["server_metadata"]
    assert meta["name"] and meta["version"]
    assert {"classification", "model_repository", "statistics", "model_configuration"} <= set(
        meta["extensions"]
    )


@pytest.mark.parametrize(
    ("model", "dims", "classes"), [(LENET, [1, 32, 32], 10), (LITE0, [3, 224, 224], 1000)]
)
def test_model_metadata(
    triton_report: dict[str, Any], model: str, dims: list[int], classes: int
) -> None:
    meta = triton_report["health"]["metadata"][model]
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
    triton_report: dict[str, Any], triton_repository: Path, model: str
) -> None:
    """What tritonclient reads is config.pbtxt, plus the server's own runtime.* parameters
    and input.* (the input forms it accepts)."""
    served = dict(triton_report["health"]["config"][model])
    added = {k: v for k, v in served["parameters"].items() if k.startswith(("runtime.", "input."))}
    assert added["runtime.backend"] == {"string_value": "onnxruntime"}
    assert added["input.datatypes"] == {"string_value": "FP32,BYTES,UINT8"}
    served["parameters"] = {k: v for k, v in served["parameters"].items() if k not in added}
    on_disk = text_format.Parse(
        (triton_repository / model / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    assert served == json_format.MessageToDict(on_disk, preserving_proto_field_name=True)
    assert served["max_batch_size"] == 16
    assert served["output"][0]["label_filename"] == "labels.txt"


def test_repository_index(triton_report: dict[str, Any]) -> None:
    assert triton_report["health"]["index"] == [
        {"name": LITE0, "version": "1", "state": "READY"},
        {"name": LENET, "version": "1", "state": "READY"},
    ]


# ------------------------------------------------------------------ lenet5: raw FP32 tensors


def test_lenet_logits_match_onnxruntime(
    triton_report: dict[str, Any], triton_digits: Digits, lenet_reference: Reference
) -> None:
    x, labels = triton_digits
    lenet = triton_report["lenet"]
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
    triton_report: dict[str, Any],
    triton_digits: Digits,
    lenet_reference: Reference,
    triton_repository: Path,
) -> None:
    want = lenet_reference(triton_digits[0][:3])
    labels = labels_of(triton_repository, LENET)
    rows = [[parse(e) for e in row] for row in triton_report["lenet"]["top3"]]
    assert [[i for _, i, _ in row] for row in rows] == np.argsort(-want, axis=1)[:, :3].tolist()
    for row, logits in zip(rows, want, strict=True):
        for score, index, label in row:
            assert label == labels[index]
            assert score == pytest.approx(float(logits[index]), abs=1e-5)


def test_request_options_pass_through(
    triton_report: dict[str, Any], triton_digits: Digits, lenet_reference: Reference
) -> None:
    """request_id echoed, model_version honoured, gzip and custom headers accepted."""
    options = triton_report["lenet"]["options"]
    assert options["id"] == "req-42"
    assert options["model_version"] == "1"
    assert_close(options["logits"], lenet_reference(triton_digits[0][:2]))


def test_sixteen_threads_each_get_their_own_rows(
    triton_report: dict[str, Any], triton_digits: Digits, lenet_reference: Reference
) -> None:
    threaded = triton_report["lenet"]["threaded"]
    assert len(threaded) == 16
    for answer in threaded:
        assert answer["ok"], answer
        start, stop = answer["slice"]
        assert_close(answer["value"], lenet_reference(triton_digits[0][start:stop]))


def test_async_infer_callbacks(
    triton_report: dict[str, Any], triton_digits: Digits, lenet_reference: Reference
) -> None:
    lenet = triton_report["lenet"]
    assert lenet["async_completed"]
    for index, answer in enumerate(lenet["async"]):
        assert answer["ok"], answer
        assert answer["id"] == f"async-{index}"
        assert_close(answer["value"], lenet_reference(triton_digits[0][index : index + 1]))


def test_statistics_count_the_successful_inferences(triton_report: dict[str, Any]) -> None:
    lenet = triton_report["lenet"]
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
    start_ms, end_ms = triton_report["wall_ms"]
    assert start_ms - 1000 <= after["last_inference"] <= end_ms + 1000  # ms since the epoch


# ------------------------------------------------------------------ efficientnet_lite0: photos


def test_photos_top5_from_encoded_bytes(
    triton_report: dict[str, Any], triton_repository: Path
) -> None:
    lite0 = triton_report["lite0"]
    labels = labels_of(triton_repository, LITE0)
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


def test_photos_from_client_preprocessed_tensors(triton_report: dict[str, Any]) -> None:
    """Preprocessing done by the client, from the config's parameters, agrees with the server's.

    The client here is torchvision's resize-then-crop; the server resamples only the crop
    (docs/images.md), which moves a few per cent of the pixels by one grey level: the
    logits then differ in the third decimal (0.0025 on these photos), never the top 5.
    """
    lite0 = triton_report["lite0"]
    for name, row in zip(lite0["names"], lite0["tensor_top5"], strict=True):
        assert parse(row[0])[1] in EXPECTED[name], f"{name}: {row}"
    top = [[parse(e)[1] for e in row] for row in lite0["tensor_top5"]]
    assert top == [[parse(e)[1] for e in row] for row in lite0["bytes_top5"]]
    assert lite0["tensor_vs_bytes_max_abs_diff"] <= 0.02


def test_photos_as_uint8_pixels(triton_report: dict[str, Any]) -> None:
    """tritonclient sending UINT8 [1, H, W, 3] pixels gets the answers of the encoded files
    (these photos decode to the same pixels both ways), and the config says what it accepts."""
    lite0 = triton_report["lite0"]
    indices = [[parse(e)[1] for e in row] for row in lite0["uint8_top5"]]
    assert indices == [[parse(e)[1] for e in row] for row in lite0["bytes_top5"]]
    forms = lite0["input_forms"]
    assert forms["input.datatypes"] == "FP32,BYTES,UINT8", forms
    assert forms["input.UINT8"].startswith("[-1, -1, -1, 3] NHWC RGB"), forms


def test_photo_statistics(triton_report: dict[str, Any]) -> None:
    lite0 = triton_report["lite0"]
    before, after = lite0["stats_before"], lite0["stats_after"]
    assert after["inference_count"] - before["inference_count"] == lite0["images_ok"]
    assert after["compute_input"] - before["compute_input"] == lite0["bytes_requests_ok"]
    assert after["fail"] == before["fail"]
