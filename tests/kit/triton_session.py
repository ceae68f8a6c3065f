"""One tritonclient session against a running server; prints what it saw as JSON.

Run by the ``triton_report`` fixture (tests/conftest.py) in a child interpreter,
because tritonclient's generated protobuf modules and ours define the same
``inference.*`` names and cannot share a process. Everything here is what a
Triton user would write with ``tritonclient.grpc`` unchanged: no import from
this project (no ``protos``, no ``server``, no torch), only tritonclient, numpy,
Pillow and the standard library.

    python tests/kit/triton_session.py PLAN.json

PLAN.json: {"url": "127.0.0.1:PORT", "photos": {name: path}, "digits": "x.npy"}
where x.npy holds lenet5 inputs, FP32 [N, 1, 32, 32]. The pytest side asserts
on the printed document; this script asserts nothing, so that one surprise does
not hide the rest.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image
from triton_shm import shm_session
from triton_stream import stream_session
from tritonclient.utils import InferenceServerException

LENET = "lenet5"
LITE0 = "efficientnet_lite0"
TOP_K = 5
THREADS = 16
ASYNC_REQUESTS = 8

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def attempt(call: Callable[[], Any]) -> dict[str, Any]:
    """Run one client call: its value, or the status and message of the error it raised."""
    try:
        value = call()
    except InferenceServerException as exc:
        return {"ok": False, "status": exc.status(), "message": exc.message()}
    return {"ok": True, "value": value}


def fp32_input(array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return tensor


def bytes_input(images: list[bytes], shape: list[int] | None = None) -> grpcclient.InferInput:
    data = np.array(images, dtype=np.object_).reshape(shape or [len(images)])
    tensor = grpcclient.InferInput("input", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def uint8_input(pixels: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("input", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))
    return tensor


def top_k(k: int) -> list[grpcclient.InferRequestedOutput]:
    return [grpcclient.InferRequestedOutput("logits", class_count=k)]


def strings(result: grpcclient.InferResult) -> list[list[str]]:
    return [[s.decode() for s in row] for row in result.as_numpy("logits")]


def statistics(client: grpcclient.InferenceServerClient, model: str) -> dict[str, Any]:
    """The counters of the model's (single) served version, as ints."""
    (stats,) = client.get_inference_statistics(model).model_stats
    infer = stats.inference_stats
    return {
        "version": stats.version,
        "last_inference": stats.last_inference,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "success": infer.success.count,
        "fail": infer.fail.count,
        "queue": infer.queue.count,
        "compute_input": infer.compute_input.count,
        "compute_infer": infer.compute_infer.count,
        "batch_stats": {str(b.batch_size): b.compute_infer.count for b in stats.batch_stats},
    }


def preprocess(path: str, params: dict[str, str]) -> np.ndarray:
    """Client-side preprocessing from the model config's parameters (what Triton users do)."""
    resize = int(params["preprocess.resize_size"])
    crop = int(params["preprocess.crop_size"])
    resample = _RESAMPLE[params["preprocess.interpolation"]]
    mean = np.array([float(v) for v in params["preprocess.mean"].split(",")], dtype=np.float32)
    std = np.array([float(v) for v in params["preprocess.std"].split(",")], dtype=np.float32)
    with Image.open(path) as opened:
        image = opened.convert(params["preprocess.color_mode"])
    width, height = image.size
    scale = resize / min(width, height)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    if size != image.size:
        image = image.resize(size, resample)
    left = int(round((size[0] - crop) / 2.0))
    top = int(round((size[1] - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - mean) / std).transpose(2, 0, 1)


def health(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": {m: client.is_model_ready(m) for m in (LENET, LITE0)},
        "lenet5_v1_ready": client.is_model_ready(LENET, "1"),
        "lenet5_v9_ready": client.is_model_ready(LENET, "9"),
        "unknown_ready": client.is_model_ready("no_such_model"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "metadata": {m: client.get_model_metadata(m, as_json=True) for m in (LENET, LITE0)},
        "config": {m: client.get_model_config(m, as_json=True)["config"] for m in (LENET, LITE0)},
        "index": client.get_model_repository_index(as_json=True).get("models", []),
    }


@dataclass
class _Tally:
    """Requests and rows answered OK, for the pytest side to compare with the counters."""

    requests: int = 0
    rows: int = 0

    def add(self, requests: int, rows: int) -> None:
        self.requests += requests
        self.rows += rows


def lenet_session(client: grpcclient.InferenceServerClient, digits: np.ndarray) -> dict[str, Any]:
    """Raw FP32 tensors: serial, client options, threads, async; counters around them."""
    out: dict[str, Any] = {"stats_before": statistics(client, LENET)}
    tally = _Tally()
    out.update(_lenet_serial(client, digits, tally))
    out["threaded"] = _lenet_threaded(client, digits, tally)
    out["async_completed"], out["async"] = _lenet_async(client, digits, tally)
    out["requests_ok"], out["rows_ok"] = tally.requests, tally.rows
    out["stats_after"] = statistics(client, LENET)
    return out


def _lenet_serial(
    client: grpcclient.InferenceServerClient, digits: np.ndarray, tally: _Tally
) -> dict[str, Any]:
    """One request at a time: all outputs by name, a Triton user's options, top-3."""
    out: dict[str, Any] = {}
    result = client.infer(
        LENET, [fp32_input(digits)], outputs=[grpcclient.InferRequestedOutput("logits")]
    )
    out["logits"] = result.as_numpy("logits").tolist()
    out["logits_dtype"] = str(result.as_numpy("logits").dtype)
    out["response"] = {
        "model_name": result.get_response().model_name,
        "model_version": result.get_response().model_version,
        "outputs": result.get_response(as_json=True)["outputs"],
    }
    tally.add(1, len(digits))

    # Everything requested when no output is named; options a Triton user passes.
    options = client.infer(
        LENET,
        [fp32_input(digits[:2])],
        model_version="1",
        request_id="req-42",
        headers={"x-request-source": "tritonclient"},
        compression_algorithm="gzip",
    )
    out["options"] = {
        "id": options.get_response().id,
        "model_version": options.get_response().model_version,
        "logits": options.as_numpy("logits").tolist(),
    }
    tally.add(1, 2)

    classified = client.infer(LENET, [fp32_input(digits[:3])], outputs=top_k(3))
    out["top3"] = strings(classified)
    tally.add(1, 3)
    return out


def _lenet_threaded(
    client: grpcclient.InferenceServerClient, digits: np.ndarray, tally: _Tally
) -> list[dict[str, Any]]:
    """16 requests at once from threads (released together), each its own slice of 1-3 rows."""
    slices = [(j % len(digits), min(j % len(digits) + 1 + j % 3, len(digits))) for j in range(16)]

    start_together = threading.Barrier(THREADS)

    def one(span: tuple[int, int]) -> dict[str, Any]:
        start_together.wait(timeout=30)
        return attempt(
            lambda: (
                client.infer(LENET, [fp32_input(digits[span[0] : span[1]])])
                .as_numpy("logits")
                .tolist()
            )
        )

    with ThreadPoolExecutor(THREADS) as pool:
        threaded = list(pool.map(one, slices))
    tally.add(
        sum(r["ok"] for r in threaded),
        sum(b - a for (a, b), r in zip(slices, threaded, strict=True) if r["ok"]),
    )
    return [{"slice": list(s), **r} for s, r in zip(slices, threaded, strict=True)]


def _lenet_async(
    client: grpcclient.InferenceServerClient, digits: np.ndarray, tally: _Tally
) -> tuple[bool, list[dict[str, Any]]]:
    """async_infer: callbacks from tritonclient's own threads; (all completed, answers)."""
    done = threading.Event()
    lock = threading.Lock()
    answers: dict[int, dict[str, Any]] = {}

    def callback(index: int, result: Any, error: Any) -> None:
        with lock:
            if error is not None:
                answers[index] = {"ok": False, "status": error.status(), "message": error.message()}
            else:
                answers[index] = {
                    "ok": True,
                    "id": result.get_response().id,
                    "value": result.as_numpy("logits").tolist(),
                }
            if len(answers) == ASYNC_REQUESTS:
                done.set()

    for index in range(ASYNC_REQUESTS):
        client.async_infer(
            LENET,
            [fp32_input(digits[index : index + 1])],
            lambda result, error, index=index: callback(index, result, error),
            request_id=f"async-{index}",
        )
    completed = done.wait(30)
    listed = [answers.get(i, {"ok": False, "status": "missing"}) for i in range(ASYNC_REQUESTS)]
    ok = sum(a["ok"] for a in answers.values())
    tally.add(ok, ok)
    return completed, listed


def lite0_session(
    client: grpcclient.InferenceServerClient, photos: dict[str, str], params: dict[str, str]
) -> dict[str, Any]:
    """Real photos: encoded bytes classified server-side, and client-preprocessed tensors."""
    names = list(photos)
    encoded = [Path(photos[n]).read_bytes() for n in names]
    out: dict[str, Any] = {"names": names, "stats_before": statistics(client, LITE0)}

    result = client.infer(LITE0, [bytes_input(encoded)], outputs=top_k(TOP_K))
    out["bytes_top5"] = strings(result)
    out["bytes_shape"] = list(result.as_numpy("logits").shape)
    out["bytes_datatype"] = result.get_output("logits").datatype

    logits = client.infer(LITE0, [bytes_input(encoded)]).as_numpy("logits")
    out["bytes_logits_shape"] = list(logits.shape)

    # [N, 1]: the shape Triton users send to models whose BYTES input has dims [1].
    column = client.infer(LITE0, [bytes_input(encoded[:1], [1, 1])], outputs=top_k(1))
    out["column_top1"] = strings(column)

    tensor = np.stack([preprocess(photos[n], params) for n in names])
    raw = client.infer(LITE0, [fp32_input(tensor)], outputs=top_k(TOP_K))
    out["tensor_top5"] = strings(raw)
    raw_logits = client.infer(LITE0, [fp32_input(tensor)]).as_numpy("logits")
    out["tensor_vs_bytes_max_abs_diff"] = float(np.max(np.abs(raw_logits - logits)))

    # Decoded RGB pixels, one request per photo (their sizes differ): UINT8 [1, H, W, 3].
    out["uint8_top5"] = []
    for name in names:
        pixels = np.asarray(Image.open(photos[name]).convert("RGB"))[None]
        result = client.infer(LITE0, [uint8_input(pixels)], outputs=top_k(TOP_K))
        out["uint8_top5"] += strings(result)
    config = client.get_model_config(LITE0, as_json=True)["config"]["parameters"]
    out["input_forms"] = {k: v["string_value"] for k, v in config.items() if k.startswith("input.")}
    out["images_ok"] = 2 * len(names) + 1 + 2 * len(names) + len(names)
    out["bytes_requests_ok"] = 3 + len(names)
    out["stats_after"] = statistics(client, LITE0)
    return out


def error_session(
    client: grpcclient.InferenceServerClient, digits: np.ndarray, jpeg: bytes
) -> dict[str, Any]:
    x = fp32_input(digits[:2])
    wrong_hw = np.zeros((2, 1, 28, 28), dtype=np.float32)
    as_int = grpcclient.InferInput("input", [2, 1, 32, 32], "INT32")
    as_int.set_data_from_numpy(np.zeros((2, 1, 32, 32), dtype=np.int32))
    renamed = grpcclient.InferInput("image", [2, 1, 32, 32], "FP32")
    renamed.set_data_from_numpy(digits[:2])
    out: dict[str, Any] = {"stats_before": statistics(client, LENET)}
    # Each of these reaches lenet5's served version and fails there.
    lenet_failures = {
        "wrong_shape": lambda: client.infer(LENET, [fp32_input(wrong_hw)]),
        "wrong_rank": lambda: client.infer(LENET, [fp32_input(digits[0])]),
        "int32": lambda: client.infer(LENET, [as_int]),
        "class_count_too_large": lambda: client.infer(LENET, [x], outputs=top_k(11)),
        "unknown_output": lambda: client.infer(
            LENET, [x], outputs=[grpcclient.InferRequestedOutput("probs")]
        ),
        "batch_too_large": lambda: client.infer(
            LENET, [fp32_input(np.zeros((17, 1, 32, 32), np.float32))]
        ),
        "unknown_input": lambda: client.infer(LENET, [renamed]),
    }
    out["lenet"] = {name: attempt(call) for name, call in lenet_failures.items()}
    out["lenet_failures"] = len(lenet_failures)
    out["stats_after"] = statistics(client, LENET)
    others = {
        "unknown_model": lambda: client.infer("no_such_model", [x]),
        "unknown_version": lambda: client.infer(LENET, [x], model_version="7"),
        "unknown_model_metadata": lambda: client.get_model_metadata("no_such_model"),
        "unknown_model_config": lambda: client.get_model_config("no_such_model"),
        "unknown_model_statistics": lambda: client.get_inference_statistics("no_such_model"),
        "not_an_image": lambda: client.infer(LITE0, [bytes_input([b"not an image"])]),
        "truncated_jpeg": lambda: client.infer(LITE0, [bytes_input([jpeg[: len(jpeg) // 3]])]),
        "cuda_shared_memory": lambda: client.register_cuda_shared_memory(
            "gpu_io", b"\0" * 64, 0, 16
        ),
    }
    out.update({name: attempt(call) for name, call in others.items()})
    return out


def lifecycle(client: grpcclient.InferenceServerClient, digits: np.ndarray) -> dict[str, Any]:
    """Unload and load lenet5 at run time, as tritonclient's model-control calls do it."""
    out: dict[str, Any] = {"unload": attempt(lambda: client.unload_model(LENET))}
    out["ready_after_unload"] = client.is_model_ready(LENET)
    out["index_after_unload"] = client.get_model_repository_index(as_json=True)["models"]
    out["infer_after_unload"] = attempt(lambda: client.infer(LENET, [fp32_input(digits[:1])]))
    out["load"] = attempt(lambda: client.load_model(LENET))
    out["ready_after_load"] = client.is_model_ready(LENET)
    out["infer_after_load"] = attempt(
        lambda: client.infer(LENET, [fp32_input(digits[:1])]).as_numpy("logits").tolist()
    )
    out["unload_unknown"] = attempt(lambda: client.unload_model("no_such_model"))
    out["load_unknown"] = attempt(lambda: client.load_model("no_such_model"))
    # A failed load of a name the repository does not hold should leave no trace.
    out["index_after_load_unknown"] = client.get_model_repository_index(as_json=True)["models"]
    out["infer_unknown_after_load_unknown"] = attempt(
        lambda: client.infer("no_such_model", [fp32_input(digits[:1])])
    )
    return out


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    digits = np.load(plan["digits"]).astype(np.float32)
    photos: dict[str, str] = plan["photos"]
    started = time.perf_counter()
    wall_ms = int(time.time() * 1000)
    with grpcclient.InferenceServerClient(plan["url"]) as client:
        report: dict[str, Any] = {"health": health(client)}
        params = {
            k: v["string_value"] for k, v in report["health"]["config"][LITE0]["parameters"].items()
        }
        report["lenet"] = lenet_session(client, digits)
        report["lite0"] = lite0_session(client, photos, params)
        jpeg = next(Path(p).read_bytes() for p in photos.values() if p.endswith(".jpg"))
        report["errors"] = error_session(client, digits, jpeg)
        report["stream"] = stream_session(client, digits)
        report["lifecycle"] = lifecycle(client, digits)
        report["shared_memory"] = shm_session(client, digits)
    report["seconds"] = time.perf_counter() - started
    report["wall_ms"] = [wall_ms, int(time.time() * 1000)]
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
