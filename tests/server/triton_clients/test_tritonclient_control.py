"""tritonclient against the server, continued: errors, model control, system
shared memory and ModelStreamInfer.

Same child-interpreter session as test_tritonclient.py (tritonclient cannot be
imported in this process: its generated protobuf modules and ours define the
same ``inference.*`` names); its report, the server and the onnxruntime
reference are the session-scoped fixtures of conftest.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.kit.triton_helpers import LENET, Digits, Reference, assert_close, parse

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
    "unknown_model": ("NOT_FOUND", ["Request for unknown model: 'no_such_model' is not found"]),
    "unknown_version": (
        "NOT_FOUND",
        ["Request for unknown model: 'lenet5' version 7 is not found"],
    ),
    "unknown_model_metadata": ("NOT_FOUND", ["no_such_model"]),
    "unknown_model_config": ("NOT_FOUND", ["no_such_model"]),
    "unknown_model_statistics": ("NOT_FOUND", ["no_such_model"]),
    "not_an_image": ("INVALID_ARGUMENT", ["element 0", "cannot decode image"]),
    "truncated_jpeg": ("INVALID_ARGUMENT", ["element 0", "truncated"]),
    "cuda_shared_memory": (
        "INVALID_ARGUMENT",
        ["failed to register CUDA shared memory region: 'gpu_io', GPUs not supported"],
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_reach_tritonclient_with_status_and_message(
    triton_report: dict[str, Any], case: str
) -> None:
    errors = triton_report["errors"]
    answer = errors["lenet"].get(case) or errors[case]
    status, fragments = ERRORS[case]
    assert answer["ok"] is False, answer
    assert answer["status"] == f"StatusCode.{status}", answer
    for fragment in fragments:
        assert fragment in answer["message"], answer


def test_failed_requests_count_as_failures(triton_report: dict[str, Any]) -> None:
    errors = triton_report["errors"]
    before, after = errors["stats_before"], errors["stats_after"]
    assert after["fail"] - before["fail"] == errors["lenet_failures"]
    assert after["success"] == before["success"]


def test_failed_requests_are_not_counted_as_inferences(triton_report: dict[str, Any]) -> None:
    errors = triton_report["errors"]
    before, after = errors["stats_before"], errors["stats_after"]
    assert after["inference_count"] == before["inference_count"]
    assert after["execution_count"] == before["execution_count"]


# ------------------------------------------------------------------ model control


def test_unload_and_load_at_run_time(
    triton_report: dict[str, Any], triton_digits: Digits, lenet_reference: Reference
) -> None:
    life = triton_report["lifecycle"]
    assert life["unload"] == {"ok": True, "value": None}
    assert life["ready_after_unload"] is False
    assert {"name": LENET, "state": "UNAVAILABLE", "reason": "unloaded"} in life[
        "index_after_unload"
    ]
    assert life["infer_after_unload"]["status"] == "StatusCode.UNAVAILABLE"
    assert life["load"] == {"ok": True, "value": None}
    assert life["ready_after_load"] is True
    assert life["infer_after_load"]["ok"]
    assert_close(life["infer_after_load"]["value"], lenet_reference(triton_digits[0][:1]))
    assert life["unload_unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert life["load_unknown"]["ok"] is False
    assert "no_such_model" in life["load_unknown"]["message"]
    assert "/" not in life["load_unknown"]["message"]  # no server path in any error


def test_failed_load_of_unknown_model_leaves_no_trace(triton_report: dict[str, Any]) -> None:
    life = triton_report["lifecycle"]
    assert "no_such_model" not in {m["name"] for m in life["index_after_load_unknown"]}
    assert life["infer_unknown_after_load_unknown"]["status"] == "StatusCode.NOT_FOUND"


# ------------------------------------------------------------------ system shared memory


def test_shared_memory_round_trip_with_tritonclient(
    triton_report: dict[str, Any], triton_digits: Digits, lenet_reference: Reference
) -> None:
    session = triton_report["shared_memory"]
    regions = session["status"].get("regions", {})
    assert set(regions) == {"lenet_io"}
    assert session["shape"] == [4, 10]
    assert_close(session["logits"], lenet_reference(triton_digits[0][:4]))
    assert session["register_twice"]["status"] == "StatusCode.ALREADY_EXISTS"
    assert not session["status_after_unregister"].get("regions")
    gone = session["infer_after_unregister"]
    assert gone["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "'lenet_io' is not registered" in gone["message"]


# ------------------------------------------------------------------ ModelStreamInfer


def test_stream_answers_every_request_exactly_once(triton_report: dict[str, Any]) -> None:
    """tritonclient gives an error answer no id, so: each success once, one error, no more."""
    stream = triton_report["stream"]
    assert stream["completed"], stream
    assert not stream["send_errors"]
    sent = stream["sent"]
    assert len(sent) == len(set(sent)) == 14  # 12 digits, the bad one, the top-3 one
    assert stream["counts"] == {key: 1 for key in sent if key != stream["bad_id"]}
    assert len(stream["errors"]) == 1
    assert stream["answers"] == len(sent)
    assert all(model == [LENET, "1"] for model in stream["models"].values())


def test_stream_logits_match_onnxruntime(
    triton_report: dict[str, Any], triton_digits: Digits, lenet_reference: Reference
) -> None:
    x = triton_digits[0]
    logits = triton_report["stream"]["logits"]
    assert sorted(logits, key=int) == [str(i) for i in range(len(x))]
    for i in range(len(x)):
        assert_close(logits[str(i)], lenet_reference(x[i : i + 1]))


def test_stream_classification_strings_are_the_top3_logits(
    triton_report: dict[str, Any], triton_digits: Digits, lenet_reference: Reference
) -> None:
    stream = triton_report["stream"]
    rows = stream["top3_rows"]
    assert len(stream["top3"]) == rows
    for i, row in enumerate(stream["top3"]):
        logits = np.asarray(stream["logits"][str(i)][0])  # the same digit, streamed on its own
        entries = [parse(entry) for entry in row]
        assert [index for _, index, _ in entries] == np.argsort(-logits)[:3].tolist()
        for score, index, _ in entries:
            assert score == pytest.approx(float(logits[index]), abs=1e-4)
    want = lenet_reference(triton_digits[0][:rows])
    assert [[parse(e)[1] for e in row] for row in stream["top3"]] == (
        np.argsort(-want, axis=1)[:, :3].tolist()
    )


def test_stream_bad_request_fails_alone_with_the_shapes(triton_report: dict[str, Any]) -> None:
    stream = triton_report["stream"]
    (error,) = stream["errors"]
    assert error["status"] is None  # an error_message answer, not a failed stream
    for fragment in ("[1, 1, 28, 28]", "[-1, 1, 32, 32]", "batch"):
        assert fragment in error["message"], error
    assert stream["bad_id"] not in stream["counts"]
    after = stream["sent"][stream["sent"].index(stream["bad_id"]) + 1 :]
    assert after, "nothing was sent after the bad request"
    assert all(stream["counts"].get(key) == 1 for key in after), stream["counts"]
