"""Real photos at the speed of the model: each request form against its in-process limit.

    python benchmarks/load.py --model mobilenet_v2 --start-server --photo-comparison --seconds 5

One run measures, for the FP32 tensor, three JPEG photo sizes (512x512,
1280x960 and a 12 MP phone photo, 4032x3024) and UINT8 pixels:
- the server: single-client p50 and images/s with 8 clients (closed loop), in
  two thread layouts unless --server-args names one: the default (one instance,
  ONNX Runtime's threads over all cores) and one 1-thread instance per core, the
  layout of the in-process limit's second worker setup;
- its in-process limit: the same decode + preprocess + ONNX Runtime pipeline in
  this process, the best of two thread layouts (decode all then infer, or two
  workers each decoding and inferring);
- preprocessing CPU per image, fast path against the reference decode
  (full-size decode, the path before DCT scaling).
Ratios come from one run, so they hold on a shared machine better than absolutes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common.machine import machine
from benchmarks.common.zoo import ensure_exported
from benchmarks.loadtest.infer_requests import (
    ModelInfo,
    check_request,
    image_requests,
    model_info,
    tensor_request,
)
from benchmarks.loadtest.loadgen import run_closed_loop
from devtools.launch import launch
from exporter.samples import photo_paths
from imaging.decode import from_pixels
from imaging.preprocess import preprocess_into, reference
from imaging.transform import batch_buffer, write_row
from modelrepo.spec import Preprocess, load_spec
from protos import grpc_service_pb2 as pb

PHOTO_SIZES = ((512, 512), (1280, 960), (4032, 3024))
UINT8_SIZE = (224, 224)  # a quarter of the FP32 tensor's bytes
BATCH = 8
CLIENTS = 8


def photos() -> dict[str, bytes]:
    """The three JPEGs, made from scikit-learn's china.jpg (bicubic, quality 90)."""
    source = Image.open(photo_paths()["china.jpg"]).convert("RGB")
    out = {}
    for width, height in PHOTO_SIZES:
        buf = io.BytesIO()
        source.resize((width, height), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        out[f"jpeg {width}x{height}"] = buf.getvalue()
    return out


def uint8_pixels() -> np.ndarray:
    source = Image.open(photo_paths()["china.jpg"]).convert("RGB")
    return np.asarray(source.resize(UINT8_SIZE, Image.Resampling.BICUBIC))


def uint8_request(info: ModelInfo, pixels: np.ndarray) -> bytes:
    req = pb.ModelInferRequest(model_name=info.name, model_version=info.version)
    req.inputs.add(name=info.input_name, datatype="UINT8", shape=[1, *pixels.shape])
    req.raw_input_contents.append(pixels.tobytes())
    return req.SerializeToString()


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """CPU milliseconds of the calling thread per call (other threads, e.g. ONNX Runtime's
    spinning ones, must not count)."""
    fn()
    start = time.thread_time()
    for _ in range(repeats):
        fn()
    return (time.thread_time() - start) / repeats * 1e3


def _writers(form: str, data: bytes | np.ndarray, pre: Preprocess) -> Callable[[np.ndarray], None]:
    if form == "tensor":
        return lambda out: None  # already a tensor: nothing to prepare
    if form == "uint8":
        return lambda out: write_row(from_pixels(data, pre), out, pre)
    return lambda out: preprocess_into(data, out, pre)


def inprocess_limit(model_file: Path, pre: Preprocess, write: Callable, seconds: float) -> float:
    """Best images/s of decode + preprocess + ONNX Runtime here, over two thread layouts."""
    import onnxruntime as ort  # late: heavy; only the in-process limit needs it

    def session(threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    shape = batch_buffer(1, pre).shape[1:]

    def run(workers: int, sess: ort.InferenceSession, pool: ThreadPoolExecutor) -> float:
        name, count = sess.get_inputs()[0].name, [0] * workers
        logits = [sess.get_outputs()[0].name]
        stop = time.perf_counter() + seconds

        def worker(k: int) -> None:
            batch = np.random.default_rng(k).standard_normal((BATCH, *shape), dtype=np.float32)
            while True:  # at least one batch, however slow the machine
                if workers == 1:
                    list(pool.map(write, batch))
                else:
                    for row in batch:
                        write(row)
                sess.run(logits, {name: batch})  # the logits only, as the server fetches
                count[k] += BATCH
                if time.perf_counter() >= stop:
                    return

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as outer:
            list(outer.map(worker, range(workers)))
        return sum(count) / (time.perf_counter() - start)

    with ThreadPoolExecutor(2) as pool:
        phased = run(1, session(2), pool)  # decode the batch on 2 threads, then infer on 2
        paired = run(2, session(1), pool)  # 2 workers, each decoding and inferring alone
    return max(phased, paired)


def layouts(server_args: str) -> dict[str, list[str]]:
    """The server layouts to measure: the one ``server_args`` names, else both standard ones."""
    if server_args:
        return {server_args: shlex.split(server_args)}
    cores = str(os.cpu_count() or 1)
    return {
        "1 instance x all cores (default)": [],
        f"{cores} instances x 1 thread": ["--intra-op-threads", "1", "--instance-count", cores],
    }


def compare(
    url: str,
    info: ModelInfo,
    repository: Path,
    seconds: float,
    log: Callable,
    server_pid: int | None = None,
) -> list:
    """One row per request form: server p50 and img/s, in-process limit, preprocess CPU."""
    spec = load_spec(repository / info.name)
    pre = spec.preprocess
    pixels = uint8_pixels()
    forms: dict[str, tuple[bytes, object]] = {"tensor": (tensor_request(info), None)}
    for name, data in photos().items():
        forms[name] = (image_requests(info, [data])[0], data)
    forms["uint8 224x224"] = (uint8_request(info, pixels), pixels)
    rows = []
    for form, (request, data) in forms.items():
        check_request(url, request)
        kind = "tensor" if data is None else "uint8" if form.startswith("uint8") else "jpeg"
        write = _writers(kind, data, pre)
        one = run_closed_loop(url, request, 1, seconds, warmup=1.0)
        many = run_closed_loop(url, request, CLIENTS, seconds, warmup=1.0, server_pid=server_pid)
        limit = inprocess_limit(spec.model_file(), pre, write, seconds)
        row = {
            "form": form,
            "request_bytes": len(request),
            # None when no answer came within the window (a very slow machine)
            "p50_ms_1_client": (one["latency"] or {}).get("p50_ms", float("nan")),
            "images_per_s_8_clients": many["throughput"],
            "inprocess_images_per_s": limit,
            "server_vs_inprocess": many["throughput"] / limit,
            # the load generator shares the cores: its CPU is not the server's to use
            "client_cpu_pct_8_clients": many["client_cpu_pct"],
            "server_cpu_pct_8_clients": many["server_cpu_pct"],
            "errors": one["error_count"] + many["error_count"],
        }
        if kind != "tensor":
            slot = batch_buffer(1, pre)[0]
            row["preprocess_cpu_ms"] = cpu_ms(lambda w=write, o=slot: w(o), 10)
            if kind == "jpeg":
                row["reference_cpu_ms"] = cpu_ms(lambda d=data: reference(d, pre), 5)
        log(f"  {form}: {row}")
        rows.append(row)
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")  # nothing measured in the window: no ratio


def markdown(rows: list[dict]) -> str:
    tensor = rows[0]
    lines = [
        "| request | bytes | p50, 1 client (× FP32) | img/s, 8 clients (× FP32) "
        "| in-process limit, img/s | server / limit | preprocess CPU, ms (× reference) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = "–"
        if "preprocess_cpu_ms" in r:
            cpu = f"{r['preprocess_cpu_ms']:.1f}"
            if "reference_cpu_ms" in r:
                cpu += f" ({_ratio(r['preprocess_cpu_ms'], r['reference_cpu_ms']):.2f}×)"
        p50 = r["p50_ms_1_client"]
        lines.append(
            f"| {r['form']} | {r['request_bytes']:,} "
            f"| {p50:.1f} ({_ratio(p50, tensor['p50_ms_1_client']):.1f}×) "
            f"| {r['images_per_s_8_clients']:.0f} "
            f"({_ratio(r['images_per_s_8_clients'], tensor['images_per_s_8_clients']):.2f}×) "
            f"| {r['inprocess_images_per_s']:.0f} | {r['server_vs_inprocess']:.2f} | {cpu} |"
        )
    return "\n".join(lines) + "\n"


def _measure_layout(a: argparse.Namespace, label: str, args: list[str]) -> list[dict]:
    """The rows of one server layout: a server of its own (or the one at --url)."""
    server = None
    url = a.url
    if a.start_server:
        log = a.out / f"photo-server-{len(args)}.log"
        server = launch(a.repository, "--model", a.model, *args, log=log)
        url = server.url
    try:
        info = model_info(url, a.model, a.model_version)
        print(f"photo comparison on {a.model}, server {label}, {a.seconds:g} s per level")
        pid = server.proc.pid if server is not None else a.server_pid
        rows = compare(url, info, a.repository, a.seconds, lambda t: print(t, flush=True), pid)
    finally:
        if server is not None:
            server.terminate()
    return [{"server": label, **row} for row in rows]


def run(a: argparse.Namespace) -> int:
    """``load.py --photo-comparison``: the rows of each layout, the tables, JSON."""
    a.model = ensure_exported(a.model, a.repository, log=print).name
    chosen = layouts(a.server_args) if a.start_server else {"at --url": []}
    measured = {label: _measure_layout(a, label, args) for label, args in chosen.items()}
    table = "\n".join(f"Server: {label}\n\n{markdown(rows)}" for label, rows in measured.items())
    meta = {"model": a.model, "machine": machine(), "seconds": a.seconds}
    meta["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    rows = [row for layout in measured.values() for row in layout]
    (a.out / "photo_compare.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (a.out / "photo_compare.md").write_text(table)
    print(table)
    return 0
