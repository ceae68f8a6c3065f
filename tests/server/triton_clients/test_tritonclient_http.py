"""The REST frontend driven by NVIDIA's own ``tritonclient.http``, unchanged.

The HTTP twin of test_tritonclient.py: the child interpreter runs
``tests/kit/triton_http_session.py`` against the HTTP port of a real server
(efficientnet_lite0 with ImageNet weights, lenet5 trained on digits) and
prints what it saw; the tests assert on that, with onnxruntime in this process
as the numerical reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporter.samples import EXPECTED
from tests.kit.triton_helpers import LENET, LITE0, Digits, Reference, assert_close, labels_of, parse


def test_health_and_metadata(triton_http_report: dict[str, Any]) -> None:
    health = triton_http_report["health"]
    assert health["live"] is True and health["ready"] is True
    assert health["model_ready"] == {LENET: True, LITE0: True}
    assert health["lenet5_v9_ready"] is False and health["unknown_ready"] is False
    assert "classification" in health["server_metadata"]["extensions"]
    meta = health["metadata"][LITE0]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]
    assert health["config"][LENET]["max_batch_size"] == 16
    assert health["config"][LENET]["input"][0]["dims"] == [1, 32, 32]
    assert {(m["name"], m["state"]) for m in health["index"]} == {
        (LENET, "READY"),
        (LITE0, "READY"),
    }


@pytest.mark.parametrize("way", ["json_json", "json_binary", "binary_json", "binary_binary"])
def test_logits_equal_onnxruntime_in_every_encoding(
    triton_http_report: dict[str, Any], triton_digits: Digits, lenet_reference: Reference, way: str
) -> None:
    x = triton_digits[0]
    assert_close(triton_http_report["lenet"][way], lenet_reference(x))


def test_options_async_compression_and_counters(
    triton_http_report: dict[str, Any], triton_digits: Digits, lenet_reference: Reference
) -> None:
    lenet, x = triton_http_report["lenet"], triton_digits[0]
    default = lenet["default_outputs"]
    assert default["id"] == "req-42" and default["model_version"] == "1"
    assert_close(default["logits"], lenet_reference(x[:2]))
    assert_close(lenet["compressed"], lenet_reference(x[:2]))
    assert_close(np.concatenate(lenet["async"]), lenet_reference(x[: len(lenet["async"])]))
    top3 = [[parse(s)[1] for s in row] for row in lenet["top3"]]
    assert top3 == np.argsort(-lenet_reference(x[:3]), axis=1, kind="stable")[:, :3].tolist()
    assert lenet["success_after"] - lenet["success_before"] == lenet["requests_ok"]


def test_photos_classified_server_side(
    triton_http_report: dict[str, Any], triton_repository: Path
) -> None:
    lite0 = triton_http_report["lite0"]
    labels = labels_of(triton_repository, LITE0)
    assert lite0["bytes_top5_json"] == lite0["bytes_top5"]
    for name, row, tensor_row in zip(
        lite0["names"], lite0["bytes_top5"], lite0["tensor_top5"], strict=True
    ):
        score, index, label = parse(row[0])
        assert index in EXPECTED[name] and label == labels[index], (name, row)
        assert parse(tensor_row[0])[1] in EXPECTED[name], (name, tensor_row)


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("wrong_shape", "400", "does not match"),
        ("int32", "400", "INT32"),
        ("class_count_too_large", "400", "exceeds"),
        ("unknown_output", "400", "probs"),
        ("batch_too_large", "400", "max_batch_size"),
        ("unknown_model", "404", "Request for unknown model: 'no_such_model' is not found"),
        ("unknown_version", "404", "Request for unknown model: 'lenet5' version 7 is not found"),
        ("unknown_model_metadata", "404", "no_such_model"),
        ("unknown_model_config", "404", "no_such_model"),
        ("not_an_image", "400", "cannot decode"),
    ],
)
def test_errors_reach_the_client_with_status_and_message(
    triton_http_report: dict[str, Any], case: str, status: str, words: str
) -> None:
    got = triton_http_report["errors"][case]
    assert got["ok"] is False and got["status"] == status and words in got["message"], got


def test_unload_and_load(triton_http_report: dict[str, Any], lenet_reference: Reference) -> None:
    life = triton_http_report["lifecycle"]
    assert life["unload"]["ok"] and life["ready_after_unload"] is False
    assert life["infer_after_unload"]["status"] == "503", life["infer_after_unload"]
    assert life["load"]["ok"] and life["ready_after_load"] is True
    assert life["infer_after_load"]["ok"]
    assert life["load_unknown"]["status"] == "404"
