"""Ensembles and explanations as a tritonclient user meets them; prints what it saw as JSON.

A child interpreter (tritonclient's protobuf modules and ours cannot share a
process, see tests/kit/triton_session.py): only tritonclient, numpy and the
standard library.

    python tests/kit/triton_features.py PLAN.json

PLAN.json: {"url": ..., "ensemble": name or null, "digits": "x.npy" or null,
"explain_model": name or null, "photo": path or null, "explain_method": "occlusion" (default)
or "cam"}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient


def ensemble(client: grpcclient.InferenceServerClient, name: str, digits: str) -> dict[str, Any]:
    x = np.load(digits)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(name, [inp])
    config = client.get_model_config(name, as_json=True)["config"]
    probs = result.as_numpy("logits")
    return {
        "platform": config["platform"],
        "steps": [s["model_name"] for s in config["ensemble_scheduling"]["step"]],
        "shape": list(probs.shape),
        "row_sums": probs.sum(axis=1).tolist(),
        "probs": probs.tolist(),
    }


def explanation(
    client: grpcclient.InferenceServerClient, name: str, photo: str, method: str
) -> dict:
    inp = grpcclient.InferInput("input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([Path(photo).read_bytes()], dtype=np.object_))
    params: dict[str, Any] = {"explain": method}
    if method == "occlusion":
        params.update(explain_patch=32, explain_stride=96)
    result = client.infer(name, [inp], parameters=params)
    heat = result.as_numpy("explanation")
    return {"shape": list(heat.shape), "top": int(result.as_numpy("logits")[0].argmax())}


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    client = grpcclient.InferenceServerClient(plan["url"])
    report: dict[str, Any] = {}
    if plan.get("ensemble"):
        report["ensemble"] = ensemble(client, plan["ensemble"], plan["digits"])
    if plan.get("explain_model"):
        method = plan.get("explain_method", "occlusion")
        report["explanation"] = explanation(client, plan["explain_model"], plan["photo"], method)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
