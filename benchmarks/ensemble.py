"""LeNet-5 ensembles through the server: accuracy gained against latency and throughput paid.

    python -m benchmarks.ensemble --repository /tmp/ens-repo --out docs/benchmarks/ensemble.json

Trains (or takes from the cache) one LeNet-5 per seed on the shared digits
split, exports them with ``python -m exporter ensemble``'s code, adds the
ensembles of the first 3 and 5 members beside the one of all 7, starts the
server and measures every single network and every ensemble on the held-out
digits (accuracy), one client sending one image at a time (latency) and
several clients at once (throughput). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from devtools.launch import launch
from exporter.digits import Recipe, split
from exporter.ensemble import EnsembleRequest, export_ensemble, write_entry
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc


def _request(model: str, x: np.ndarray) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    return req


def _scores(stub: pb_grpc.GRPCInferenceServiceStub, model: str, x: np.ndarray) -> np.ndarray:
    rows = []
    for start in range(0, len(x), 16):
        resp = stub.ModelInfer(_request(model, x[start : start + 16]), timeout=120)
        rows.append(np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(-1, 10))
    return np.concatenate(rows)


def _latency(stub: pb_grpc.GRPCInferenceServiceStub, model: str, x: np.ndarray, n: int) -> dict:
    times = []
    for i in range(n):
        started = time.perf_counter()
        stub.ModelInfer(_request(model, x[i % len(x)][None]), timeout=120)
        times.append(time.perf_counter() - started)
    return {
        "p50_ms": 1e3 * float(np.median(times)),
        "p99_ms": 1e3 * float(np.quantile(times, 0.99)),
    }


def _throughput(url: str, model: str, x: np.ndarray, clients: int, per_client: int) -> float:
    def client(c: int) -> None:
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))
        for i in range(per_client):
            stub.ModelInfer(_request(model, x[(c + i) % len(x)][None]), timeout=120)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return clients * per_client / (time.perf_counter() - started)


def build(repository: Path, seeds: tuple[int, ...], sizes: tuple[int, ...], epochs: int) -> None:
    request = EnsembleRequest(
        name=f"lenet5x{len(seeds)}",
        members=("lenet5",),
        seeds=seeds,
        epochs=epochs,
        repository=repository,
    )
    export_ensemble(request, progress=lambda _: None)
    for size in sizes:
        if size != len(seeds):
            entries = [f"lenet5_seed{s}" for s in seeds[:size]]
            write_entry(
                repository, EnsembleRequest(name=f"lenet5x{size}", members=("lenet5",)), entries, []
            )


def measure(args: argparse.Namespace) -> dict:
    seeds = tuple(range(max(args.sizes)))
    if not (args.repository / f"lenet5x{max(args.sizes)}").is_dir():  # else: built before
        build(args.repository, seeds, args.sizes, args.epochs)
    _, x_test, _, y_test = split(Recipe())
    x = ((x_test.astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None]
    server = launch(args.repository, log=args.repository / "server.log", timeout=600)
    rows = []
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.url))
        models = [f"lenet5_seed{s}" for s in seeds] + [f"lenet5x{k}" for k in args.sizes]
        for model in models:
            accuracy = float((_scores(stub, model, x).argmax(1) == y_test).mean())
            rows.append({"model": model, "accuracy": accuracy})
        timed = [
            r for r in rows if r["model"] == "lenet5_seed0" or r["model"].startswith("lenet5x")
        ]
        # interleaved rounds, median of each: a shared machine drifts during a run
        rounds: dict[str, list[dict]] = {r["model"]: [] for r in timed}
        for _ in range(args.rounds):
            for model in rounds:
                _latency(stub, model, x, 20)  # warm-up
                sample = _latency(stub, model, x, args.requests)
                sample["images_per_s"] = _throughput(
                    server.url, model, x, args.clients, args.requests // args.clients
                )
                rounds[model].append(sample)
        for row in timed:
            samples = rounds[row["model"]]
            for key in samples[0]:
                row[key] = float(np.median([s[key] for s in samples]))
    finally:
        server.terminate()
    return {"heldout_images": int(len(y_test)), "epochs": args.epochs, "rows": rows}


def table(result: dict) -> str:
    rows = result["rows"]
    singles = [r for r in rows if r["model"].startswith("lenet5_seed")]
    err_single = 1 - float(np.mean([r["accuracy"] for r in singles]))
    base = next(r for r in rows if r["model"] == "lenet5_seed0")
    lines = [
        "| model | held-out accuracy | error vs mean single | p50 ms (1 image) | "
        "p99 ms | images/s (clients) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = 1 - r["accuracy"]
        cells = [r["model"], f"{r['accuracy']:.2%}", f"{err / err_single:.2f}x"]
        if "p50_ms" in r:
            cells += [
                f"{r['p50_ms']:.2f} ({r['p50_ms'] / base['p50_ms']:.2f}x)",
                f"{r['p99_ms']:.2f}",
                f"{r['images_per_s']:.0f} ({r['images_per_s'] / base['images_per_s']:.2f}x)",
            ]
        else:
            cells += ["", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\nmean single-network error {err_single:.2%} on {result['heldout_images']} "
        f"held-out digits; members trained {result['epochs']} epochs each"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ensemble", description=__doc__)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument(
        "--sizes", type=lambda s: tuple(int(v) for v in s.split(",")), default=(3, 5, 7)
    )
    parser.add_argument("--epochs", type=int, default=Recipe().epochs)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = measure(args)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
