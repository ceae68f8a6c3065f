"""What a request costs over HTTP/REST next to gRPC, on one server.

One client, one request at a time, persistent connections on both sides: a
gRPC ModelInfer with raw tensor bytes, an HTTP request with the same bytes in
Triton's binary tensor extension, and one with the tensor as a JSON array.
Rounds interleave the three so that load from elsewhere on a shared machine
falls on all of them alike. Per protocol: client latency p50/mean and the
server process's CPU time per request (from /proc), which is what HTTP adds.

    python benchmarks/http_vs_grpc.py --repository model_repository --model lenet5
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.launch import launch  # noqa: E402
from modelrepo.spec import load_spec  # noqa: E402
from protos import grpc_service_pb2 as pb  # noqa: E402
from protos import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def callers(port: int, http_port: int, model: str, x: np.ndarray) -> dict[str, Callable[[], None]]:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    conn = http.client.HTTPConnection("127.0.0.1", http_port)
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
    ).encode()  # fmt: skip
    binary = header + x.tobytes()
    as_json = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
    path = f"/v2/models/{model}/infer"

    def post(body: bytes, headers: dict[str, str]) -> None:
        conn.request("POST", path, body, headers)
        reply = conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")

    return {
        "grpc": lambda: stub.ModelInfer(request),
        "http_binary": lambda: post(binary, {"Inference-Header-Content-Length": str(len(header))}),
        "http_json": lambda: post(as_json, {"Content-Type": "application/json"}),
    }


def measure(pid: int, calls: dict[str, Callable[[], None]], rounds: int, per_round: int) -> dict:
    times: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, float] = dict.fromkeys(calls, 0.0)
    for call in calls.values():  # warm-up: connections, first batches
        for _ in range(20):
            call()
    for _ in range(rounds):
        for name, call in calls.items():
            before = cpu_seconds(pid)
            for _ in range(per_round):
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
            cpu[name] += cpu_seconds(pid) - before
    n = rounds * per_round
    return {
        name: {
            "requests": n,
            "p50_ms": statistics.median(t) * 1e3,
            "mean_ms": statistics.fmean(t) * 1e3,
            "server_cpu_ms_per_request": cpu[name] / n * 1e3,
        }
        for name, t in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=50)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "http_vs_grpc.json")
    a = p.parse_args(argv)
    dims = [d if d > 0 else 224 for d in load_spec(a.repository / a.model).input_dims]
    x = np.random.default_rng(0).standard_normal((a.batch, *dims)).astype(np.float32)
    log = Path(tempfile.mkdtemp()) / "server.log"
    srv = launch(a.repository, "--model", a.model, "--metrics-port", "-1", log=log)
    try:
        result = measure(srv.proc.pid, callers(srv.port, srv.http_port, a.model, x), a.rounds,
                         a.per_round)  # fmt: skip
    finally:
        srv.terminate()
    grpc_row = result["grpc"]
    for row in result.values():
        row["p50_vs_grpc"] = row["p50_ms"] / grpc_row["p50_ms"]
        row["cpu_vs_grpc"] = (
            row["server_cpu_ms_per_request"] / grpc_row["server_cpu_ms_per_request"]
        )
    doc = {"model": a.model, "input": list(x.shape), "machine_cpus": os.cpu_count(), **result}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2))
    print(f"| {a.model} {list(x.shape)} | p50 ms | mean ms | server CPU ms/request |")
    print("|---|---|---|---|")
    for name, row in result.items():
        print(
            f"| {name} | {row['p50_ms']:.2f} ({row['p50_vs_grpc']:.2f}x) | {row['mean_ms']:.2f} | "
            f"{row['server_cpu_ms_per_request']:.2f} ({row['cpu_vs_grpc']:.2f}x) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
