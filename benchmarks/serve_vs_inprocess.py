"""The server against in-process ONNX Runtime, same model, same threads, one run.

    python benchmarks/serve_vs_inprocess.py --repository /tmp/perf_repo --out /tmp/perf_out
    python benchmarks/serve_vs_inprocess.py --repository /tmp/perf_repo --out /tmp/perf_out \
        --server-args "" --server-args "--max-queue-delay-us 0" --profile

1. Export the model into --repository if it is missing (this may import torch;
   it happens before anything is timed).
2. In process: one ONNX Runtime session (intra_op_num_threads = --threads),
   p50 latency at batch 1 and throughput (images/s over the timed runs) at
   each of --batch-sizes.
3. For each --server-args variant: start ``python -m server`` with the same
   threads, run benchmarks/load.py's closed loop at each --concurrency level,
   stop it with SIGTERM.
4. In process again, batch 1 and the best batch size: how much the machine
   drifted during the run.

Printed and written to <out>/serve_vs_inprocess.json: in-process batch-1 p50
vs server single-stream p50 (target: at most +1.0 ms), best in-process
throughput vs server throughput at the highest concurrency (target: at least
0.90x), batching efficiency, queue/compute time, client and server CPU.
With --profile the server runs under cProfile (its event-loop thread) and the
top functions are written next to the results.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import load  # noqa: E402
from benchmarks.latency import machine  # noqa: E402
from benchmarks.stats import summarize  # noqa: E402

LATENCY_TARGET_MS = 1.0
THROUGHPUT_TARGET = 0.90


# --- in process ---------------------------------------------------------------


def ensure_exported(repository: Path, model: str) -> Path:
    """The newest model.onnx of ``model``, exporting it first when there is none."""
    model_dir = repository / model
    versions = sorted(int(p.name) for p in model_dir.glob("[0-9]*") if (p / "model.onnx").is_file())
    if not versions:
        from exporter.pipeline import ExportRequest, export_model

        print(f"exporting {model} into {repository} ...", flush=True)
        export_model(ExportRequest(model=model, repository=repository))
        versions = sorted(
            int(p.name) for p in model_dir.glob("[0-9]*") if (p / "model.onnx").is_file()
        )
    return model_dir / str(versions[-1]) / "model.onnx"


def input_shape(repository: Path, model: str) -> tuple[int, ...]:
    """One image's shape from config.pbtxt; dynamic dims take preprocess.crop_size."""
    from google.protobuf import text_format

    from protos import model_config_pb2 as mc

    config = text_format.Parse((repository / model / "config.pbtxt").read_text(), mc.ModelConfig())
    dims = list(config.input[0].dims)
    if any(d < 0 for d in dims):
        crop = int(config.parameters["preprocess.crop_size"].string_value)
        dims = [crop if d < 0 else d for d in dims]
    return tuple(dims)


def inprocess(
    onnx_path: Path,
    shape: tuple[int, ...],
    threads: int,
    batch_sizes: list[int],
    seconds: float,
    warmup_runs: int = 5,
) -> list[dict]:
    """p50 latency and images/s per batch size, one session, intra-op = ``threads``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # as the server's backend
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = []
    for batch in batch_sizes:
        x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
        for _ in range(warmup_runs):
            session.run(None, {name: x})
        times: list[float] = []
        own0, all0 = time.process_time(), load.machine_cpu_seconds()
        started = time.perf_counter()
        while len(times) < 10 or time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            session.run(None, {name: x})
            times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        own1, all1 = time.process_time(), load.machine_cpu_seconds()
        stats = summarize(times, batch)
        other = None
        if all0 is not None and all1 is not None:  # CPU other processes took meanwhile
            other = 100 * ((all1 - all0) - (own1 - own0)) / elapsed
        rows.append(
            {
                "batch": batch,
                "threads": threads,
                "runs": stats.runs,
                "p50_ms": stats.p50_ms,
                "p90_ms": stats.p90_ms,
                "p99_ms": stats.p99_ms,
                "mean_ms": stats.mean_ms,
                "throughput": batch * len(times) / elapsed,
                "own_cpu_pct": 100 * (own1 - own0) / elapsed,
                "other_cpu_pct": other,
            }
        )
        print(
            f"  in process b={batch:<2} p50 {stats.p50_ms:7.2f} ms"
            f"  {rows[-1]['throughput']:7.1f} img/s ({stats.runs} runs)"
            f"  CPU {rows[-1]['own_cpu_pct']:.0f}%, others {other or 0:.0f}%",
            flush=True,
        )
    del session
    gc.collect()
    return rows


# --- the server ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    metrics_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_server(
    repository: Path,
    model: str,
    threads: int,
    extra: list[str],
    log: Path,
    profile: Path | None = None,
    timeout: float = 180,
) -> Server:
    """``python -m server`` on free localhost ports; returns once it printed 'ready:'."""
    port, metrics_port = free_port(), free_port()
    prefix = [sys.executable]
    if profile is not None:
        prefix += ["-m", "cProfile", "-o", str(profile)]
    cmd = [
        *prefix,
        "-m",
        "server",
        "--model-repository",
        str(repository),
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--metrics-host",
        "127.0.0.1",
        "--intra-op-threads",
        str(threads),
        *extra,
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "ready:" in log.read_text():
            return Server(proc, port, metrics_port, log)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"server not ready after {timeout}s:\n{log.read_text()}")


def profile_top(prof: Path, out: Path, lines: int = 40) -> str:
    """The server's cProfile, by own time and by cumulative time, as text."""
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    stats.strip_dirs().sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)
    out.write_text(buf.getvalue())
    return buf.getvalue()


def run_variant(args: argparse.Namespace, index: int, extra: list[str]) -> dict:
    profile = args.out / f"server-{index}.prof" if args.profile else None
    server = start_server(
        args.repository,
        args.model,
        args.threads,
        extra,
        args.out / f"server-{index}.log",
        profile,
    )
    levels = []
    try:
        info = load.model_info(server.url, args.model)
        request = load.tensor_request(info, 1)
        load.check_request(server.url, request)
        for n in args.concurrency:
            row = load.run_closed_loop(
                server.url,
                request,
                n,
                args.seconds,
                args.warmup,
                metrics_url=server.metrics_url,
                model=args.model,
                server_pid=server.proc.pid,
                shared_channel=args.shared_channel,
            )
            levels.append(row)
            srv = row["server"] or {}
            print(
                f"  server c={n:<2} p50 {row['latency']['p50_ms']:7.2f} ms"
                f"  {row['throughput']:7.1f} img/s  errors {row['error_count']}"
                f"  batch eff. {srv.get('batching_efficiency') or 0:.2f}"
                f"  queue {srv.get('queue_ms_mean') or 0:.2f} ms"
                f"  compute {srv.get('compute_ms_mean') or 0:.2f} ms"
                f"  server e2e {srv.get('request_ms_mean') or 0:.2f} ms"
                f"  client CPU {row['client_cpu_pct']:.0f}%"
                f"  server CPU {row['server_cpu_pct'] or 0:.0f}%"
                f"  others {row.get('other_cpu_pct') or 0:.0f}%",
                flush=True,
            )
    finally:
        rc = server.stop()
    result = {"server_args": extra, "exit_code": rc, "levels": levels}
    if profile is not None and profile.is_file():
        result["profile"] = str(profile)
        profile_top(profile, args.out / f"server-{index}.profile.txt")
    return result


# --- comparison ---------------------------------------------------------------


def compare(inproc: list[dict], variant: dict) -> dict:
    b1 = next(r for r in inproc if r["batch"] == 1)
    best = max(inproc, key=lambda r: r["throughput"])
    levels = {lv["concurrency"]: lv for lv in variant["levels"]}
    single = levels.get(1)
    top = levels[max(levels)]
    out: dict = {
        "server_args": " ".join(variant["server_args"]),
        "inprocess_b1_p50_ms": b1["p50_ms"],
        "best_inprocess_throughput": best["throughput"],
        "best_inprocess_batch": best["batch"],
        "concurrency": top["concurrency"],
        "server_throughput": top["throughput"],
        "throughput_ratio": top["throughput"] / best["throughput"],
        "batching_efficiency": (top["server"] or {}).get("batching_efficiency"),
        "client_cpu_pct": {str(k): lv["client_cpu_pct"] for k, lv in levels.items()},
        "server_cpu_pct": {str(k): lv["server_cpu_pct"] for k, lv in levels.items()},
    }
    out["throughput_target_met"] = out["throughput_ratio"] >= THROUGHPUT_TARGET
    if single is not None and single["latency"]:
        out["server_single_p50_ms"] = single["latency"]["p50_ms"]
        out["p50_overhead_ms"] = out["server_single_p50_ms"] - b1["p50_ms"]
        out["latency_target_met"] = out["p50_overhead_ms"] <= LATENCY_TARGET_MS
    return out


def report(summary: dict) -> None:
    args = summary["server_args"] or "(defaults)"
    print(f"\nserver args: {args}")
    if "server_single_p50_ms" in summary:
        ok = "met" if summary["latency_target_met"] else "MISSED"
        print(
            f"  in-process batch-1 p50   {summary['inprocess_b1_p50_ms']:8.2f} ms\n"
            f"  server single-stream p50 {summary['server_single_p50_ms']:8.2f} ms"
            f"   difference {summary['p50_overhead_ms']:+.2f} ms"
            f" (target <= +{LATENCY_TARGET_MS} ms: {ok})"
        )
    ok = "met" if summary["throughput_target_met"] else "MISSED"
    print(
        f"  best in-process          {summary['best_inprocess_throughput']:8.1f} img/s"
        f" at batch {summary['best_inprocess_batch']}\n"
        f"  server, {summary['concurrency']} clients       "
        f"{summary['server_throughput']:8.1f} img/s   ratio {summary['throughput_ratio']:.3f}"
        f" (target >= {THROUGHPUT_TARGET}: {ok})\n"
        f"  batching efficiency      {summary['batching_efficiency'] or 0:8.2f} images/batch\n"
        "  client CPU               "
        + ", ".join(f"c={k}: {v:.1f}%" for k, v in summary["client_cpu_pct"].items())
        + "\n  server CPU               "
        + ", ".join(f"c={k}: {(v or 0):.0f}%" for k, v in summary["server_cpu_pct"].items())
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-sizes", default="1,2,4,8,16", help="in-process batch sizes")
    p.add_argument("--inproc-seconds", type=float, default=3.0, help="per in-process batch size")
    p.add_argument("--concurrency", default="1,8", help="server closed-loop levels")
    p.add_argument("--seconds", type=float, default=10.0, help="per server level")
    p.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per server level")
    p.add_argument(
        "--server-args",
        action="append",
        default=None,
        help='extra server flags, e.g. "--max-queue-delay-us 0"; repeat for several variants',
    )
    p.add_argument("--shared-channel", action="store_true", help="one gRPC channel for all")
    p.add_argument("--profile", action="store_true", help="run the server under cProfile")
    p.add_argument("--no-recheck", action="store_true", help="skip the in-process re-check")
    p.add_argument("--out", type=Path, default=Path("results"))
    a = p.parse_args(argv)
    a.batch_sizes = load._numbers(a.batch_sizes, int, "--batch-sizes")
    a.concurrency = load._numbers(a.concurrency, int, "--concurrency")
    if 1 not in a.batch_sizes:
        a.batch_sizes = [1, *a.batch_sizes]
    a.variants = [shlex.split(s) for s in (a.server_args or [""])]
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = ensure_exported(args.repository, args.model)  # before any timing
    shape = input_shape(args.repository, args.model)
    meta = {**machine(), "load_average": os.getloadavg(), "argv": sys.argv[1:]}
    print(f"machine: {meta}\n{args.model} {shape}, {args.threads} threads", flush=True)
    print("in process:", flush=True)
    inproc = inprocess(onnx_path, shape, args.threads, args.batch_sizes, args.inproc_seconds)
    variants = []
    for i, extra in enumerate(args.variants):
        print(f"server {i}: {' '.join(extra) or '(defaults)'}", flush=True)
        variants.append(run_variant(args, i, extra))
    recheck: list[dict] = []
    if not args.no_recheck:
        best = max(inproc, key=lambda r: r["throughput"])["batch"]
        print("in process again (drift check):", flush=True)
        recheck = inprocess(onnx_path, shape, args.threads, sorted({1, best}), args.inproc_seconds)
    summaries = [compare(inproc, v) for v in variants]
    for s in summaries:
        report(s)
    if recheck:
        before = {r["batch"]: r for r in inproc}
        drift = [
            f"b={r['batch']}: p50 {before[r['batch']]['p50_ms']:.2f} -> {r['p50_ms']:.2f} ms, "
            f"{before[r['batch']]['throughput']:.1f} -> {r['throughput']:.1f} img/s"
            for r in recheck
        ]
        print("\nin-process drift over the run: " + "; ".join(drift))
    meta["load_average_end"] = os.getloadavg()
    result = {
        "machine": meta,
        "model": args.model,
        "threads": args.threads,
        "inprocess": inproc,
        "inprocess_recheck": recheck,
        "variants": variants,
        "summary": summaries,
    }
    path = args.out / "serve_vs_inprocess.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")
    return 0 if all(v["exit_code"] == 0 for v in variants) else 1


if __name__ == "__main__":
    sys.exit(main())
