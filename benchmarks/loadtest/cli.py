"""Load generator against the server (like Triton's perf_analyzer).

    python benchmarks/load.py --model mobilenet_v2 --concurrency 1,2,4,8,16 --seconds 20
    python benchmarks/load.py --model mobilenet_v2 --rate 50,100 --seconds 10
    python benchmarks/load.py --model mobilenet_v2 --sample-images --batch 2
    python benchmarks/load.py --model mobilenet_v2 --start-server --compare-batching

Without --start-server it loads a running server at --url (metrics from
--metrics-url; --server-pid adds its CPU). With --start-server it starts
``python -m server`` on --repository for --model (exporting the model there
first if it is missing), and --compare-batching runs every level twice: with
the model's dynamic batching, then on a server restarted with --no-batching.

Closed loop (--concurrency): N workers back to back. Open loop (--rate):
Poisson arrivals at R requests/s. Requests carry a raw FP32 tensor, or
encoded images (--images FILES, or --sample-images for the bundled photos)
that the server decodes. Per level: p50/p90/p95/p99, images/s, errors by
gRPC code, client/server/other CPU, and from the server's metrics the images
per executed batch and the queue vs compute time. Writes <out>/load.csv,
load.json, load.md and load.png (latency vs throughput per configuration).

This module never imports torch, ONNX Runtime or tritonclient (unless it has
to export the model for --start-server).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common.machine import machine
from benchmarks.common.zoo import default_repository, ensure_exported
from benchmarks.loadtest import photos
from benchmarks.loadtest.infer_requests import (
    ModelInfo,
    check_request,
    image_requests,
    model_info,
    shared_memory_request,
    tensor_request,
)
from benchmarks.loadtest.loadgen import run_closed_loop, run_open_loop
from benchmarks.loadtest.server_metrics import DEFAULT_METRICS_URL
from benchmarks.report import load as load_report
from devtools.launch import launch
from exporter.samples import photo_paths


def _numbers(text: str, kind: type, flag: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag} '{text}' must be comma-separated numbers") from None
    if not values or any(v <= 0 for v in values):
        raise SystemExit(f"{flag} '{text}' must hold numbers > 0")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    _add_target_arguments(p)
    _add_level_arguments(p)
    _add_request_arguments(p)
    _add_run_arguments(p)
    a = p.parse_args(argv)
    if a.batch < 1:
        p.error("--batch must be >= 1")
    if a.images and a.sample_images:
        p.error("give --images or --sample-images, not both")
    if a.shared_memory == "system" and (a.images or a.sample_images):
        p.error("--shared-memory system carries FP32 tensors; encoded images go in the request")
    if a.streaming and a.rate is not None:
        p.error("--streaming drives closed-loop levels (--concurrency); --rate is unary only")
    if a.seconds <= 0 or a.warmup < 0:
        p.error("--seconds must be > 0 and --warmup >= 0")
    a.start_server = a.start_server or a.compare_batching
    if a.concurrency is None and a.rate is None:
        a.concurrency = "1,2,4,8"
    a.levels = _numbers(a.concurrency, int, "--concurrency") if a.concurrency else []
    a.rates = _numbers(a.rate, float, "--rate") if a.rate else []
    return a


def _add_target_arguments(p: argparse.ArgumentParser) -> None:
    """The model, and the server to load and watch."""
    p.add_argument("--model", required=True)
    p.add_argument("--model-version", default="")
    p.add_argument("--url", default="127.0.0.1:8001", help="a running server's gRPC address")
    p.add_argument("--metrics-url", default=DEFAULT_METRICS_URL, help="'' to skip metrics")
    p.add_argument("--server-pid", type=int, default=None, help="report the server's CPU too")


def _add_level_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", default=None, help="closed-loop levels (default 1,2,4,8)")
    p.add_argument("--rate", default=None, help="open-loop levels, requests/s")
    p.add_argument("--seconds", type=float, default=10.0, help="timed window per level")
    p.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per level")
    p.add_argument("--batch", type=int, default=1, help="images per request")


def _add_request_arguments(p: argparse.ArgumentParser) -> None:
    """What a request carries, and how it travels."""
    p.add_argument("--images", nargs="+", type=Path, help="send these encoded images (BYTES)")
    p.add_argument("--sample-images", action="store_true", help="send the bundled photos")
    p.add_argument("--shared-channel", action="store_true", help="one channel for all workers")
    p.add_argument(
        "--shared-memory",
        choices=("none", "system"),
        default="none",
        help="system: pass the input tensor through POSIX shared memory (Triton's\n"
        "extension, as perf_analyzer --shared-memory system); client and server on one host",
    )
    p.add_argument(
        "--streaming",
        action="store_true",
        help="closed loop over ModelStreamInfer: one open stream per worker (perf_analyzer\n"
        "--streaming); the per-request --timeout does not apply to streams",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="per-request deadline (s)")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Servers this run starts itself, the comparisons that need them, and the output."""
    p.add_argument("--start-server", action="store_true", help="start a server on --repository")
    p.add_argument("--repository", type=Path, default=default_repository())
    p.add_argument("--server-args", default="", help="extra flags for a started server")
    p.add_argument(
        "--compare-batching",
        action="store_true",
        help="(starts servers) every level with dynamic batching, then with --no-batching",
    )
    p.add_argument(
        "--photo-comparison",
        action="store_true",
        help="FP32 tensor vs JPEG 512x512/1280x960/4032x3024 vs UINT8, each against its "
        "in-process limit (benchmarks/loadtest/photos.py)",
    )
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--no-chart", action="store_true")


def _image_bytes(a: argparse.Namespace) -> list[bytes] | None:
    if a.sample_images:
        paths = list(photo_paths().values())
        if not paths:
            raise SystemExit("--sample-images: no photos (install scikit-image or scikit-learn)")
        return [p.read_bytes() for p in paths]
    return [p.read_bytes() for p in a.images] if a.images else None


def sweep(a: argparse.Namespace, url: str, metrics_url: str | None, pid: int | None) -> list:
    """Every closed-loop level, then every open-loop rate, against one server."""
    info: ModelInfo = model_info(url, a.model, a.model_version)
    if a.batch > info.max_batch_size:
        raise SystemExit(f"--batch {a.batch} exceeds max_batch_size {info.max_batch_size}")
    images = _image_bytes(a)
    with contextlib.ExitStack() as stack:
        if a.shared_memory == "system":
            requests = [stack.enter_context(shared_memory_request(url, info, a.batch))]
        elif images:
            requests = image_requests(info, images, a.batch)
        else:
            requests = [tensor_request(info, a.batch)]
        return _sweep_requests(a, url, metrics_url, pid, info, requests, bool(images))


def _sweep_requests(
    a: argparse.Namespace,
    url: str,
    metrics_url: str | None,
    pid: int | None,
    info: ModelInfo,
    requests: list[bytes],
    images: bool,
) -> list:
    response = check_request(url, requests[0], a.timeout)
    print(
        f"{a.model}: input {info.input_name} {[a.batch, *info.input_shape]}"
        f" ({'encoded images' if images else 'FP32'}, {len(requests[0]):,} bytes/request"
        f"{', input in shared memory' if a.shared_memory == 'system' else ''}),"
        f" outputs {[o.name for o in response.outputs]}",
        flush=True,
    )
    common = dict(
        batch_size=a.batch,
        metrics_url=metrics_url,
        model=a.model,
        server_pid=pid,
        timeout=a.timeout,
    )
    rows = []
    for n in a.levels:
        rows.append(
            run_closed_loop(
                url,
                requests,
                n,
                a.seconds,
                a.warmup,
                shared_channel=a.shared_channel,
                streaming=a.streaming,
                **common,
            )
        )
        print(f"  c={n}: {rows[-1]['throughput']:.1f} img/s", flush=True)
    for rate in a.rates:
        rows.append(run_open_loop(url, requests, rate, a.seconds, a.warmup, **common))
        print(f"  {rate:g}/s: {rows[-1]['throughput']:.1f} img/s", flush=True)
    return rows


def started_sweeps(a: argparse.Namespace) -> list[dict]:
    """Start a server per configuration (batching on, and off with --compare-batching)."""

    a.model = ensure_exported(a.model, a.repository, log=print).name  # an alias: its folder
    extra = shlex.split(a.server_args)
    suffix = f" [{a.server_args}]" if a.server_args else ""
    configs = [("batching on" + suffix, extra)]
    if a.compare_batching:
        configs.append(("batching off" + suffix, [*extra, "--no-batching"]))
    rows = []
    for i, (name, flags) in enumerate(configs):
        log = a.out / f"load-server-{i}.log"
        print(f"starting server ({name}) on {a.repository}; log {log}", flush=True)
        server = launch(a.repository, "--model", a.model, *flags, log=log)
        try:
            found = sweep(a, server.url, server.metrics_url, server.proc.pid)
        finally:
            code = server.terminate()
        if code != 0:
            print(f"server ({name}) exited with {code}; see {log}", file=sys.stderr)
        rows += [{"config": name, "server_flags": flags, **r} for r in found]
    return rows


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.photo_comparison:
        return photos.run(a)
    started = time.perf_counter()
    if a.start_server:
        rows = started_sweeps(a)
    else:
        rows = [
            {"config": "server", **r} for r in sweep(a, a.url, a.metrics_url or None, a.server_pid)
        ]
    for r in rows:
        if r.get("metrics_error"):
            print(f"metrics: {r['metrics_error']}", file=sys.stderr)
    inputs = "encoded images" if (a.images or a.sample_images) else "raw FP32 tensors"
    if a.shared_memory == "system":
        inputs = "FP32 tensors in system shared memory"
    if a.streaming:
        inputs += ", ModelStreamInfer"
    load_report.table(rows, title=f"{a.model}, {inputs}, batch {a.batch}")
    meta = {
        "model": a.model,
        "url": None if a.start_server else a.url,
        "batch": a.batch,
        "inputs": inputs,
        "streaming": a.streaming,
        "seconds": a.seconds,
        "warmup": a.warmup,
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    paths = load_report.write(rows, a.out, meta, chart=not a.no_chart)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 1 if any(r["error_count"] for r in rows) else 0
