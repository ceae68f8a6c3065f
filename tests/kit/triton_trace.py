"""Trace and log settings as a tritonclient user meets them; prints what it saw as JSON.

A child interpreter (tritonclient's protobuf modules and ours cannot share a process):
only tritonclient, numpy and the standard library.

    python tests/kit/triton_trace.py PLAN.json

PLAN.json: {"grpc": "127.0.0.1:port", "http": "127.0.0.1:port", "model": name,
"digits": "x.npy"}
"""

from __future__ import annotations

import json
import queue
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def attempt(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": True, "value": call()}
    except InferenceServerException as exc:
        return {"ok": False, "status": str(exc.status()), "message": exc.message()}


def grpc_settings(answer: dict[str, Any]) -> dict[str, list[str]]:
    return {k: v.get("value", []) for k, v in answer["settings"].items()}


def infer(client: Any, module: Any, model: str, x: np.ndarray) -> list[float]:
    inp = module.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("logits")[0].tolist()


def stream_infer(client: Any, model: str, x: np.ndarray) -> list[float]:
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.async_stream_infer(model, [inp])
        answer = answers.get(timeout=120)
    finally:
        client.stop_stream()
    if isinstance(answer, Exception):
        raise answer
    return answer.as_numpy("logits")[0].tolist()


def trace_flow(g: Any, h: Any, model: str, x: np.ndarray) -> dict[str, Any]:
    report: dict[str, Any] = {
        "defaults_grpc": grpc_settings(g.get_trace_settings(as_json=True)),
        "defaults_http": h.get_trace_settings(),
        "global_http": h.update_trace_settings(
            settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}
        ),
        "model_grpc": grpc_settings(
            g.update_trace_settings(model, {"log_frequency": "2", "trace_count": "4"}, as_json=True)
        ),
    }
    order = ["grpc", "grpc", "grpc", "http", "http"]
    for protocol in order:
        client, module = (g, grpcclient) if protocol == "grpc" else (h, httpclient)
        infer(client, module, model, x)
    report["order"] = order
    report["model_after"] = h.get_trace_settings(model_name=model)
    cleared = {"log_frequency": None, "trace_count": None}
    report["cleared"] = grpc_settings(g.update_trace_settings(model, cleared, as_json=True))
    report["global_now"] = grpc_settings(g.get_trace_settings(as_json=True))
    infer(h, httpclient, model, x)  # traced under the global setting: written at shutdown
    report["stream"] = stream_infer(g, model, x)  # so is a streamed one
    report["errors"] = {
        "grpc_file": attempt(lambda: g.update_trace_settings(settings={"trace_file": "/tmp/x"})),
        "http_file": attempt(lambda: h.update_trace_settings(settings={"trace_file": "/tmp/x"})),
        "grpc_unknown_model": attempt(lambda: g.get_trace_settings("no_such_model")),
        "http_unknown_model": attempt(lambda: h.get_trace_settings("no_such_model")),
        "http_bad_rate": attempt(lambda: h.update_trace_settings(settings={"trace_rate": "x"})),
        "grpc_tensors": attempt(
            lambda: g.update_trace_settings(settings={"trace_level": ["TENSORS"]})
        ),
    }
    return report


def log_flow(g: Any, h: Any, model: str) -> dict[str, Any]:
    def reload() -> None:
        g.unload_model(model)
        g.load_model(model)

    report: dict[str, Any] = {
        "defaults_grpc": g.get_log_settings(as_json=True)["settings"],
        "defaults_http": h.get_log_settings(),
        "iso": g.update_log_settings({"log_format": "ISO8601"}, as_json=True)["settings"],
    }
    reload()  # logged in ISO8601
    report["quiet"] = h.update_log_settings({"log_info": False})
    reload()  # not logged
    report["loud"] = g.update_log_settings({"log_info": True}, as_json=True)["settings"]
    reload()  # logged
    report["errors"] = {
        "http_file": attempt(lambda: h.update_log_settings({"log_file": "/tmp/x"})),
        "grpc_format": attempt(lambda: g.update_log_settings({"log_format": "xml"})),
        "http_info": attempt(lambda: h.update_log_settings({"log_info": "yes"})),
    }
    return report


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    g = grpcclient.InferenceServerClient(plan["grpc"])
    h = httpclient.InferenceServerClient(plan["http"])
    x = np.load(plan["digits"])
    report = {
        "trace": trace_flow(g, h, plan["model"], x),
        "log": log_flow(g, h, plan["model"]),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
