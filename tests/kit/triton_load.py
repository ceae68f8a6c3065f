"""Model load with ``config`` and ``file:`` parameters as a tritonclient user meets it,
over gRPC and HTTP; prints what it saw as JSON.

A child interpreter (tritonclient's protobuf modules and ours cannot share a
process, see tests/kit/triton_session.py): only tritonclient, numpy and the standard library.

    python tests/kit/triton_load.py PLAN.json

PLAN.json: {"grpc": "host:port", "http": "host:port", "model": served model name,
"onnx": its model.onnx, "files_config": a complete ModelConfig JSON for a model made of
that file alone}
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def attempt(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": True, "value": fn()}
    except InferenceServerException as exc:
        return {"ok": False, "status": str(exc.status()), "message": exc.message()}


def max_batch(client: Any, name: str, grpc: bool) -> int:
    config = client.get_model_config(name, as_json=True) if grpc else client.get_model_config(name)
    config = config["config"] if grpc else config
    return int(config.get("max_batch_size", 0))


def infer_shape(client: Any, module: Any, name: str) -> list[int]:
    inp = module.InferInput("input", [2, 1, 32, 32], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 1, 32, 32), np.float32))
    return list(client.infer(name, [inp]).as_numpy("logits").shape)


def session(client: Any, module: Any, grpc: bool, plan: dict[str, Any]) -> dict[str, Any]:
    model, onnx = plan["model"], Path(plan["onnx"]).read_bytes()
    tag = "grpc" if grpc else "http"
    out: dict[str, Any] = {}
    out["override"] = attempt(lambda: client.load_model(model, config='{"max_batch_size": 8}'))
    out["max_batch_after_override"] = max_batch(client, model, grpc)
    out["plain_reload"] = attempt(lambda: client.load_model(model))
    out["max_batch_after_plain_reload"] = max_batch(client, model, grpc)
    out["malformed"] = attempt(
        lambda: client.load_model(model, config='{"max_batch_size": "eight"}')
    )
    out["not_json"] = attempt(lambda: client.load_model(model, config="max_batch_size: 8"))
    out["no_input"] = attempt(lambda: client.load_model(model, config='{"input": []}'))
    out["ready_after_refusals"] = client.is_model_ready(model)
    out["max_batch_after_refusals"] = max_batch(client, model, grpc)
    files = {"file:1/model.onnx": onnx}
    named = f"from_files_{tag}"
    config = json.dumps({**json.loads(plan["files_config"]), "name": named})
    out["files"] = attempt(lambda: client.load_model(named, config=config, files=files))
    out["files_ready"] = client.is_model_ready(named)
    out["files_infer_shape"] = infer_shape(client, module, named)
    out["files_without_config"] = attempt(lambda: client.load_model(f"{named}_2", files=files))
    escape = {"file:../../escaped.onnx": onnx}
    out["files_escaping"] = attempt(
        lambda: client.load_model(f"{named}_3", config=config, files=escape)
    )
    out["unknown"] = attempt(lambda: client.load_model("no_such_model"))
    out["restore"] = attempt(lambda: client.load_model(model, config='{"max_batch_size": 16}'))
    return out


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    report = {
        "grpc": session(grpcclient.InferenceServerClient(plan["grpc"]), grpcclient, True, plan),
        "http": session(httpclient.InferenceServerClient(plan["http"]), httpclient, False, plan),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
