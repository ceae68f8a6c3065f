"""Triton's published client examples, as flows, against a real server (issue 27).

The child interpreter (tests/kit/triton_examples.py) runs what simple_http_shm_client.py,
simple_grpc_shm_client.py, simple_http_health_metadata.py, image_client.py and
reuse_infer_objects_client.py do with tritonclient, over both protocols; these tests
assert on what it saw, with onnxruntime in this process as the numerical reference.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporter.samples import EXPECTED
from tests.kit import KIT
from tests.kit.triton_helpers import LENET, ROOT, Reference, assert_close, parse

SCRIPT = KIT / "triton_examples.py"
PROTOCOLS = ("http", "grpc")


@pytest.fixture(scope="module")
def examples(
    http_server: Any,
    triton_digits: tuple[np.ndarray, np.ndarray],
    photos: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("triton-examples")
    np.save(folder / "digits.npy", triton_digits[0])
    plan = {
        "http": f"127.0.0.1:{http_server.http_port}",
        "grpc": http_server.url,
        "digits": str(folder / "digits.npy"),
        "photos": {name: str(path) for name, path in photos.items()},
    }
    (folder / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(folder / "plan.json")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def x(triton_digits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return triton_digits[0][:3]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shm_example_inputs_and_outputs_through_shared_memory(
    examples: dict[str, Any], protocol: str, x: np.ndarray, lenet_reference: Reference
) -> None:
    flow = examples[protocol]["shm"]
    assert {(r["name"], r["byte_size"]) for r in flow["status"]} == {
        ("input_data", x.nbytes),
        ("output_data", 3 * 10 * 4),
    }
    assert flow["output_shape"] == [3, 10]
    assert_close(flow["logits"], lenet_reference(x))
    assert flow["status_after"] == []
    twice, missing, unknown = (
        flow["register_twice"],
        flow["register_missing_key"],
        flow["status_unknown"],
    )
    assert not twice["ok"] and "already registered" in twice["message"], twice
    assert not missing["ok"] and "does not exist" in missing["message"], missing
    assert not unknown["ok"], unknown
    assert "Unable to find system shared memory region: 'nowhere'" in unknown["message"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cuda_cleanup_calls_answer_as_triton_without_gpu(
    examples: dict[str, Any], protocol: str
) -> None:
    cuda = examples[protocol]["cuda"]
    assert cuda["status"] == {"ok": True, "value": [] if protocol == "http" else {}}
    assert cuda["unregister_all"]["ok"] and cuda["unregister_one"]["ok"]
    register = cuda["register"]
    assert register["ok"] is False
    assert register["status"] == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    assert "CUDA shared memory region: 'gpu_io', GPUs not supported" in register["message"]


def test_health_metadata_example(examples: dict[str, Any]) -> None:
    health = examples["health"]
    assert health["live"] and health["ready"] and health["model_ready"]
    extensions = health["server_metadata"]["extensions"]
    assert {"binary_tensor_data", "system_shared_memory", "classification"} <= set(extensions)
    assert "cuda_shared_memory" not in extensions  # Register refuses here: not listed
    assert health["model_metadata"]["name"] == LENET
    for case in ("wrong_model_metadata", "wrong_model_config"):
        answer = health[case]
        assert answer["ok"] is False and answer["status"] == "404", answer
        assert answer["message"] == "Request for unknown model: 'wrong_model_name' is not found"
    (stats,) = examples["statistics"]["model_stats"]
    response = stats["response_stats"]["0"]
    assert response["success"]["count"] == stats["inference_stats"]["success"]["count"] > 0
    assert response["compute_infer"]["count"] > 0 and response["compute_infer"]["ns"] > 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_image_client_reads_hw_from_the_exported_config(
    examples: dict[str, Any], protocol: str
) -> None:
    run = examples[protocol]["image_client"]
    assert run["chw"] == [3, 224, 224]  # an export declares its resolution, not [3, -1, -1]
    assert len(run["top3"]) == len(run["names"]) >= 2
    rows = zip(run["names"], run["top3"], strict=True)
    hits = [parse(row[0])[1] in EXPECTED[name] for name, row in rows]
    assert sum(hits) >= len(hits) - 1, run  # image_client's plain resize, no centre crop
    if run["async_top3"] is not None:
        assert run["async_top3"] == run["top3"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reused_infer_objects_give_the_same_logits(
    examples: dict[str, Any], protocol: str, x: np.ndarray, lenet_reference: Reference
) -> None:
    answers = examples[protocol]["reuse"]["logits"]
    assert len(answers) == 3
    for logits in answers:
        assert_close(logits, lenet_reference(x))
