"""The streaming part of the tritonclient session (tests/kit/triton_session.py).

Written as a Triton user would: ``start_stream`` with one callback, one
``async_stream_infer`` per request, each with its own ``request_id``, answers
matched by ``result.get_response().id``. tritonclient hands an error answer to
the callback as an ``InferenceServerException`` built from ``error_message``
alone (no result, so no id), which is why errors are reported as a list and
successes by id. Only tritonclient, numpy and the standard library.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

LENET = "lenet5"
WAIT_S = 30.0
BAD = "bad"  # id of the request with the wrong shape
TOP3 = "top3"  # id of the request asking for classification strings
TOP3_ROWS = 3  # digits[:3], so its strings can be checked against ids "0", "1", "2"


def _input(array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return tensor


def _plan(
    digits: np.ndarray,
) -> list[tuple[str, np.ndarray, list[grpcclient.InferRequestedOutput]]]:
    """(request id, input, outputs): every digit, with a bad and a top-3 one in the middle."""
    plan: list[tuple[str, np.ndarray, list[grpcclient.InferRequestedOutput]]] = []
    logits_out = [grpcclient.InferRequestedOutput("logits")]
    for i, row in enumerate(digits):
        if i == len(digits) // 2:
            wrong = np.zeros((1, 1, 28, 28), dtype=np.float32)
            plan.append((BAD, wrong, logits_out))
            top3 = [grpcclient.InferRequestedOutput("logits", class_count=3)]
            plan.append((TOP3, digits[:TOP3_ROWS], top3))
        plan.append((str(i), row[None], logits_out))
    return plan


def stream_session(client: grpcclient.InferenceServerClient, digits: np.ndarray) -> dict[str, Any]:
    """Every digit as its own request on one stream, with a bad and a top-3 one in the middle."""
    plan = _plan(digits)
    lock = threading.Lock()
    done = threading.Event()
    out: dict[str, Any] = {
        "bad_id": BAD,
        "top3_id": TOP3,
        "top3_rows": TOP3_ROWS,
        "sent": [],
        "send_errors": [],
        "arrival": [],
        "counts": {},
        "logits": {},
        "models": {},
        "top3": [],
        "errors": [],
    }

    def callback(result: grpcclient.InferResult | None, error: Any) -> None:
        with lock:
            if error is not None:
                out["errors"].append({"status": error.status(), "message": error.message()})
                out["arrival"].append(None)
            else:
                response = result.get_response()
                key = response.id
                out["arrival"].append(key)
                out["counts"][key] = out["counts"].get(key, 0) + 1
                out["models"][key] = [response.model_name, response.model_version]
                values = result.as_numpy("logits")
                if key == TOP3:
                    out["top3"] = [[s.decode() for s in row] for row in values]
                else:
                    out["logits"][key] = values.tolist()
            if len(out["arrival"]) >= len(plan):
                done.set()

    client.start_stream(callback=callback)
    try:
        for key, array, outputs in plan:
            try:
                client.async_stream_infer(LENET, [_input(array)], request_id=key, outputs=outputs)
            except InferenceServerException as exc:  # the stream already failed
                out["send_errors"].append({"id": key, "message": exc.message()})
            else:
                out["sent"].append(key)
        out["completed"] = done.wait(WAIT_S)
    finally:
        # Cancel rather than wait for answers that may never come, so the session ends.
        client.stop_stream(cancel_requests=not done.is_set())
    with lock:
        out["answers"] = len(out["arrival"])
    return out
