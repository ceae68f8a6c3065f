"""The flows of Triton's published Python client examples, run unchanged in spirit.

Each function follows one example from triton-inference-server/client
(src/python/examples): simple_{http,grpc}_shm_client.py (system shared memory for
inputs and outputs, with the CUDA cleanup calls they make), simple_http_health_metadata.py,
image_client.py (model parsing and preprocessing from the metadata and config, then
classification), and reuse_infer_objects_client.py (one InferInput reused with data,
then shared memory, then data again). A child interpreter, as in triton_session.py:
only tritonclient, numpy, Pillow and the standard library; it prints what it saw as JSON
and asserts nothing.

    python tests/kit/triton_examples.py PLAN.json

PLAN.json: {"http": "127.0.0.1:PORT", "grpc": "127.0.0.1:PORT", "digits": "x.npy",
"photos": {name: path}}
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as mc
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from PIL import Image
from triton_session import LENET, LITE0, attempt

CLIENTS: dict[str, ModuleType] = {"http": httpclient, "grpc": grpcclient}


def _json(value: Any) -> Any:
    """gRPC answers as_json quote 64-bit numbers; HTTP answers do not: one form for both."""
    return json.loads(json.dumps(value))


def shm_flow(protocol: str, url: str, x: np.ndarray) -> dict[str, Any]:
    """simple_*_shm_client.py: input and output regions, registered, used, unregistered."""
    lib = CLIENTS[protocol]
    client = lib.InferenceServerClient(url)
    out: dict[str, Any] = {}
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    x = np.ascontiguousarray(x, dtype=np.float32)
    out_bytes = x.shape[0] * 10 * 4
    tag = f"{protocol}-{os.getpid()}"
    handles = {
        "input_data": shm.create_shared_memory_region("input_data", f"/in-{tag}", x.nbytes),
        "output_data": shm.create_shared_memory_region("output_data", f"/out-{tag}", out_bytes),
    }
    try:
        shm.set_shared_memory_region(handles["input_data"], [x])
        client.register_system_shared_memory("input_data", f"/in-{tag}", x.nbytes)
        client.register_system_shared_memory("output_data", f"/out-{tag}", out_bytes)
        status = client.get_system_shared_memory_status()
        out["status"] = _json(status if protocol == "http" else _grpc_regions(status))
        tensor = lib.InferInput("input", list(x.shape), "FP32")
        tensor.set_shared_memory("input_data", x.nbytes)
        logits = lib.InferRequestedOutput("logits")
        logits.set_shared_memory("output_data", out_bytes)
        result = client.infer(LENET, [tensor], outputs=[logits])
        output = result.get_output("logits")
        out["output_shape"] = [
            int(d) for d in (output["shape"] if protocol == "http" else output.shape)
        ]
        got = shm.get_contents_as_numpy(handles["output_data"], np.float32, out["output_shape"])
        out["logits"] = got.tolist()
        out["register_twice"] = attempt(
            lambda: client.register_system_shared_memory("input_data", f"/in-{tag}", x.nbytes)
        )
        out["register_missing_key"] = attempt(
            lambda: client.register_system_shared_memory("nowhere", f"/no-{tag}", 16)
        )
        out["status_unknown"] = attempt(lambda: client.get_system_shared_memory_status("nowhere"))
        client.unregister_system_shared_memory("input_data")
        client.unregister_system_shared_memory("output_data")
        after = client.get_system_shared_memory_status()
        out["status_after"] = _json(after if protocol == "http" else _grpc_regions(after))
    finally:
        for handle in handles.values():
            shm.destroy_shared_memory_region(handle)
    return out


def _grpc_regions(status: Any) -> list[dict[str, Any]]:
    return [
        {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
        for r in status.regions.values()
    ]


def cuda_flow(protocol: str, url: str) -> dict[str, Any]:
    """The CUDA calls Triton's shm examples make first and last, on a host without a GPU."""
    client = CLIENTS[protocol].InferenceServerClient(url)
    as_json = {"as_json": True} if protocol == "grpc" else {}
    return {
        "status": attempt(lambda: _json(client.get_cuda_shared_memory_status(**as_json))),
        "unregister_all": attempt(lambda: client.unregister_cuda_shared_memory()),
        "unregister_one": attempt(lambda: client.unregister_cuda_shared_memory("gpu_io")),
        "register": attempt(
            lambda: client.register_cuda_shared_memory("gpu_io", b"\0" * 64, 0, 64)
        ),
    }


def health_metadata(url: str) -> dict[str, Any]:
    """simple_http_health_metadata.py."""
    client = httpclient.InferenceServerClient(url)
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(LENET),
        "server_metadata": client.get_server_metadata(),
        "model_metadata": client.get_model_metadata(LENET),
        "wrong_model_metadata": attempt(lambda: client.get_model_metadata("wrong_model_name")),
        "wrong_model_config": attempt(lambda: client.get_model_config("wrong_model_name")),
    }


def _as_attrs(value: Any) -> Any:
    """image_client.py's AttrDict over HTTP's JSON metadata and config."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _as_attrs(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_as_attrs(v) for v in value]
    return value


def parse_model(metadata: Any, config: Any) -> tuple[int, str, str, int, int, int, int, str]:
    """image_client.py's parse_model: one input of 3 dims (CHW or HWC), one vector output."""
    if len(metadata.inputs) != 1 or len(metadata.outputs) != 1 or len(config.input) != 1:
        raise ValueError("expecting 1 input and 1 output")
    inp, cfg_in, output = metadata.inputs[0], config.input[0], metadata.outputs[0]
    if output.datatype != "FP32":
        raise ValueError(f"expecting output datatype FP32, got {output.datatype}")
    batched = config.max_batch_size > 0
    if len(inp.shape) != 3 + int(batched):
        raise ValueError(f"expecting input to have {3 + int(batched)} dims, got {inp.shape}")
    fmt = cfg_in.format
    if isinstance(fmt, str):
        fmt = dict(mc.ModelInput.Format.items())[fmt]
    if fmt not in (mc.ModelInput.FORMAT_NCHW, mc.ModelInput.FORMAT_NHWC):
        raise ValueError(f"unexpected input format {fmt}")
    dims = [int(d) for d in inp.shape[int(batched) :]]
    c, h, w = dims if fmt == mc.ModelInput.FORMAT_NCHW else (dims[2], dims[0], dims[1])
    return config.max_batch_size, inp.name, output.name, c, h, w, fmt, inp.datatype


def preprocess(path: str, fmt: int, c: int, h: int, w: int) -> np.ndarray:
    """image_client.py's preprocess with -s INCEPTION (which raises if h or w <= 0)."""
    if h <= 0 or w <= 0:
        raise ValueError("height and width must be > 0")  # what the issue saw on [3, -1, -1]
    img = Image.open(path).convert("L" if c == 1 else "RGB")
    resized = np.array(img.resize((w, h), Image.BILINEAR))
    if resized.ndim == 2:
        resized = resized[:, :, np.newaxis]
    scaled = resized.astype(np.float32) / 127.5 - 1
    return np.transpose(scaled, (2, 0, 1)) if fmt == mc.ModelInput.FORMAT_NCHW else scaled


def image_client(protocol: str, url: str, photos: dict[str, str]) -> dict[str, Any]:
    """image_client.py -m efficientnet_lite0 -c 3 -s INCEPTION -b N, sync and async."""
    lib = CLIENTS[protocol]
    client = lib.InferenceServerClient(url)
    if protocol == "grpc":
        metadata = client.get_model_metadata(LITE0)
        config = client.get_model_config(LITE0).config
    else:
        metadata = _as_attrs(client.get_model_metadata(LITE0))
        config = _as_attrs(client.get_model_config(LITE0))
    max_batch, in_name, out_name, c, h, w, fmt, dtype = parse_model(metadata, config)
    names = sorted(photos)[: max(1, max_batch)]
    batch = np.stack([preprocess(photos[n], fmt, c, h, w) for n in names])
    tensor = lib.InferInput(in_name, list(batch.shape), dtype)
    tensor.set_data_from_numpy(batch)
    wanted = [lib.InferRequestedOutput(out_name, class_count=3)]
    result = client.infer(LITE0, [tensor], outputs=wanted)
    pending = client.async_infer(LITE0, [tensor], outputs=wanted) if protocol == "http" else None
    return {
        "chw": [c, h, w],
        "names": names,
        "top3": [[_text(s) for s in row] for row in result.as_numpy(out_name)],
        "async_top3": None
        if pending is None
        else [[_text(s) for s in row] for row in pending.get_result().as_numpy(out_name)],
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def reuse_infer_objects(protocol: str, url: str, x: np.ndarray) -> dict[str, Any]:
    """reuse_infer_objects_client.py: one InferInput and one InferRequestedOutput reused for
    data, then shared memory, then data again; every answer must be the same logits."""
    lib = CLIENTS[protocol]
    client = lib.InferenceServerClient(url)
    x = np.ascontiguousarray(x, dtype=np.float32)
    key = f"/reuse-{protocol}-{os.getpid()}"
    handle = shm.create_shared_memory_region("reuse_in", key, x.nbytes)
    tensor = lib.InferInput("input", list(x.shape), "FP32")
    logits = lib.InferRequestedOutput("logits")
    answers = []
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory("reuse_in", key, x.nbytes)
        for step in ("data", "shm", "data_again"):
            if step == "shm":
                tensor.set_shared_memory("reuse_in", x.nbytes)
            else:
                tensor.set_data_from_numpy(x)
            answers.append(client.infer(LENET, [tensor], outputs=[logits]).as_numpy("logits"))
        client.unregister_system_shared_memory("reuse_in")
    finally:
        shm.destroy_shared_memory_region(handle)
    return {"logits": [a.tolist() for a in answers]}


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    x = np.load(plan["digits"])[:3]
    report: dict[str, Any] = {"health": health_metadata(plan["http"])}
    for protocol in ("http", "grpc"):
        url = plan[protocol]
        report[protocol] = {
            "shm": shm_flow(protocol, url, x),
            "cuda": cuda_flow(protocol, url),
            "image_client": image_client(protocol, url, plan["photos"]),
            "reuse": reuse_infer_objects(protocol, url, x),
        }
    # After the flows' inferences: Triton's statistics, response_stats included.
    report["statistics"] = httpclient.InferenceServerClient(plan["http"]).get_inference_statistics(
        LENET
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
