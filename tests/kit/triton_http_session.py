"""One ``tritonclient.http`` session against a running server; prints what it saw as JSON.

The HTTP twin of ``triton_session.py`` (run the same way, by the
``triton_http_report`` fixture, in a child interpreter): what a Triton user
writes with ``tritonclient.http`` unchanged, tensors as JSON and as Triton's
binary extension, no import from this project.

    python tests/kit/triton_http_session.py PLAN.json

PLAN.json: {"url": "127.0.0.1:PORT", "photos": {name: path}, "digits": "x.npy"}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from triton_session import LENET, LITE0, TOP_K, attempt, preprocess

ASYNC_REQUESTS = 8


def fp32_input(array: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32), binary_data=binary)
    return tensor


def bytes_input(images: list[bytes]) -> httpclient.InferInput:
    tensor = httpclient.InferInput("input", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    return tensor


def logits(binary: bool = True, k: int = 0) -> list[httpclient.InferRequestedOutput]:
    return [httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=k)]


def strings(result: httpclient.InferResult) -> list[list[str]]:
    return [
        [s.decode() if isinstance(s, bytes) else s for s in row]
        for row in result.as_numpy("logits")
    ]


def success_count(client: httpclient.InferenceServerClient, model: str) -> int:
    (stats,) = client.get_inference_statistics(model)["model_stats"]
    return int(stats["inference_stats"]["success"]["count"])


def health(client: httpclient.InferenceServerClient) -> dict[str, Any]:
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": {m: client.is_model_ready(m) for m in (LENET, LITE0)},
        "lenet5_v9_ready": client.is_model_ready(LENET, "9"),
        "unknown_ready": client.is_model_ready("no_such_model"),
        "server_metadata": client.get_server_metadata(),
        "metadata": {m: client.get_model_metadata(m) for m in (LENET, LITE0)},
        "config": {m: client.get_model_config(m) for m in (LENET, LITE0)},
        "index": client.get_model_repository_index(),
    }


def lenet_session(client: httpclient.InferenceServerClient, digits: np.ndarray) -> dict[str, Any]:
    """lenet5's logits four ways (JSON or binary, in and out), top-3, async, counted."""
    out: dict[str, Any] = {"success_before": success_count(client, LENET)}
    for name, binary_in, binary_out in (
        ("json_json", False, False),
        ("json_binary", False, True),
        ("binary_json", True, False),
        ("binary_binary", True, True),
    ):
        result = client.infer(LENET, [fp32_input(digits, binary_in)], outputs=logits(binary_out))
        out[name] = result.as_numpy("logits").tolist()
    everything = client.infer(
        LENET, [fp32_input(digits[:2])], request_id="req-42", model_version="1"
    )
    out["default_outputs"] = {
        "id": everything.get_response()["id"],
        "model_version": everything.get_response()["model_version"],
        "logits": everything.as_numpy("logits").tolist(),
    }
    compressed = client.infer(
        LENET,
        [fp32_input(digits[:2])],
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    out["compressed"] = compressed.as_numpy("logits").tolist()
    out["top3"] = strings(client.infer(LENET, [fp32_input(digits[:3])], outputs=logits(False, 3)))
    pending = [
        client.async_infer(LENET, [fp32_input(digits[i : i + 1])], request_id=f"async-{i}")
        for i in range(ASYNC_REQUESTS)
    ]
    out["async"] = [p.get_result().as_numpy("logits").tolist() for p in pending]
    out["requests_ok"] = 4 + 1 + 1 + 1 + ASYNC_REQUESTS
    out["success_after"] = success_count(client, LENET)
    return out


def lite0_session(
    client: httpclient.InferenceServerClient, photos: dict[str, str], params: dict[str, str]
) -> dict[str, Any]:
    names = list(photos)
    encoded = [Path(photos[n]).read_bytes() for n in names]
    out: dict[str, Any] = {"names": names}
    result = client.infer(LITE0, [bytes_input(encoded)], outputs=logits(True, TOP_K))
    out["bytes_top5"] = strings(result)
    out["bytes_top5_json"] = strings(
        client.infer(LITE0, [bytes_input(encoded)], outputs=logits(False, TOP_K))
    )
    tensor = np.stack([preprocess(photos[n], params) for n in names])
    out["tensor_top5"] = strings(
        client.infer(LITE0, [fp32_input(tensor)], outputs=logits(True, TOP_K))
    )
    return out


def error_session(client: httpclient.InferenceServerClient, digits: np.ndarray) -> dict[str, Any]:
    x = fp32_input(digits[:2])
    as_int = httpclient.InferInput("input", [2, 1, 32, 32], "INT32")
    as_int.set_data_from_numpy(np.zeros((2, 1, 32, 32), dtype=np.int32))
    wrong_hw = fp32_input(np.zeros((2, 1, 28, 28), np.float32))
    too_many = fp32_input(np.zeros((17, 1, 32, 32), np.float32))
    probs = [httpclient.InferRequestedOutput("probs")]
    calls = {
        "wrong_shape": lambda: client.infer(LENET, [wrong_hw]),
        "int32": lambda: client.infer(LENET, [as_int]),
        "class_count_too_large": lambda: client.infer(LENET, [x], outputs=logits(True, 11)),
        "unknown_output": lambda: client.infer(LENET, [x], outputs=probs),
        "batch_too_large": lambda: client.infer(LENET, [too_many]),
        "unknown_model": lambda: client.infer("no_such_model", [x]),
        "unknown_version": lambda: client.infer(LENET, [x], model_version="7"),
        "unknown_model_metadata": lambda: client.get_model_metadata("no_such_model"),
        "unknown_model_config": lambda: client.get_model_config("no_such_model"),
        "not_an_image": lambda: client.infer(LITE0, [bytes_input([b"not an image"])]),
    }
    return {name: attempt(call) for name, call in calls.items()}


def lifecycle(client: httpclient.InferenceServerClient, digits: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"unload": attempt(lambda: client.unload_model(LENET))}
    out["ready_after_unload"] = client.is_model_ready(LENET)
    out["infer_after_unload"] = attempt(lambda: client.infer(LENET, [fp32_input(digits[:1])]))
    out["load"] = attempt(lambda: client.load_model(LENET))
    out["ready_after_load"] = client.is_model_ready(LENET)
    out["infer_after_load"] = attempt(
        lambda: client.infer(LENET, [fp32_input(digits[:1])]).as_numpy("logits").tolist()
    )
    out["load_unknown"] = attempt(lambda: client.load_model("no_such_model"))
    return out


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    digits = np.load(plan["digits"]).astype(np.float32)
    started = time.perf_counter()
    client = httpclient.InferenceServerClient(plan["url"], concurrency=4)
    try:
        report: dict[str, Any] = {"health": health(client)}
        params = {
            k: v["string_value"] for k, v in report["health"]["config"][LITE0]["parameters"].items()
        }
        report["lenet"] = lenet_session(client, digits)
        report["lite0"] = lite0_session(client, plan["photos"], params)
        report["errors"] = error_session(client, digits)
        report["lifecycle"] = lifecycle(client, digits)
    finally:
        client.close()
    report["seconds"] = time.perf_counter() - started
    json.dump(report, sys.stdout, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
