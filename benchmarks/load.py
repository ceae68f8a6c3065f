"""Load generator against a running server (like Triton's perf_analyzer).

    python benchmarks/load.py --url 127.0.0.1:8001 --model mobilenet_v2 \
        --concurrency 1,2,4,8 --seconds 10 [--batch 1] [--images cat.jpg ...] [--out DIR]
    python benchmarks/load.py --model mobilenet_v2 --rate 50,100 --seconds 10

Closed loop (``--concurrency``): N workers, each sending its next request as
soon as the previous answer arrives. Open loop (``--rate``): Poisson arrivals
at R requests/s, whatever the answers do. Requests are built once and sent as
pre-serialized bytes through a generic unary call (no protobuf work per
request on the client); answers are not parsed. Each level gets a warm-up
that is not counted, then a timed window; a request counts when it was sent
inside the window and (closed loop) answered inside it.

Per level: requests, errors by gRPC code, throughput (images/s), latency
percentiles, client CPU as % of wall, and, from the server's Prometheus
metrics scraped at both ends of the window, the batching efficiency
(images / executions) and the mean queue and compute time; with
``--server-pid`` also the server's CPU as % of wall (Linux /proc).

This module never imports torch, ONNX Runtime or tritonclient.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import struct
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stats import summarize  # noqa: E402
from protos import grpc_service_pb2 as pb  # noqa: E402
from protos import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
DEFAULT_METRICS_URL = "http://127.0.0.1:8002/metrics"
MAX_MESSAGE_BYTES = 64 << 20
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Each channel its own TCP connection (otherwise gRPC may share one subchannel).
    ("grpc.use_local_subchannel_pool", 1),
)
Requests = bytes | Sequence[bytes]


# --- requests -----------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    input_name: str
    input_shape: tuple[int, ...]  # one image, -1 dims resolved
    max_batch_size: int


def model_info(url: str, model: str, version: str = "", timeout: float = 10) -> ModelInfo:
    """Input name and one image's shape from ModelMetadata + ModelConfig.

    Dynamic dims (-1) take the model's ``preprocess.crop_size`` parameter.
    """
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(
            pb.ModelMetadataRequest(name=model, version=version), timeout=timeout
        )
        config = stub.ModelConfig(
            pb.ModelConfigRequest(name=model, version=version), timeout=timeout
        ).config
    tensor = meta.inputs[0]
    dims = list(tensor.shape)[1:]  # drop the batch axis
    if any(d < 0 for d in dims):
        if "preprocess.crop_size" not in config.parameters:
            raise ValueError(f"model {model}: input {list(tensor.shape)} is dynamic, no crop_size")
        crop = int(config.parameters["preprocess.crop_size"].string_value)
        dims = [crop if d < 0 else d for d in dims]
    return ModelInfo(model, version, tensor.name, tuple(dims), max(config.max_batch_size, 1))


def tensor_request(info: ModelInfo, batch: int = 1, seed: int = 0) -> bytes:
    """A serialized ModelInferRequest carrying a raw FP32 NCHW tensor of ``batch`` images."""
    shape = (batch, *info.input_shape)
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    req = pb.ModelInferRequest(model_name=info.name, model_version=info.version)
    req.inputs.add(name=info.input_name, datatype="FP32", shape=list(shape))
    req.raw_input_contents.append(x.astype("<f4").tobytes())
    return req.SerializeToString()


def image_requests(info: ModelInfo, images: Sequence[bytes], batch: int = 1) -> list[bytes]:
    """Serialized requests of ``batch`` encoded images each (BYTES), cycling through ``images``.

    As many requests as needed so that every image is sent at least once.
    """
    if not images:
        raise ValueError("no images given")
    count = max(1, -(-len(images) // batch))
    out = []
    for r in range(count):
        chosen = [images[(r * batch + i) % len(images)] for i in range(batch)]
        req = pb.ModelInferRequest(model_name=info.name, model_version=info.version)
        req.inputs.add(name=info.input_name, datatype="BYTES", shape=[batch])
        req.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in chosen))
        out.append(req.SerializeToString())
    return out


def check_request(url: str, request: bytes, timeout: float = 30) -> pb.ModelInferResponse:
    """Send one request and parse its answer: fail early, before any timing."""
    with grpc.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(INFER_METHOD, request_serializer=None)
        raw = call(request, timeout=timeout)
    return pb.ModelInferResponse.FromString(raw)


# --- server-side figures ------------------------------------------------------


def scrape(metrics_url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(metrics_url, timeout=timeout) as resp:
        return resp.read().decode()


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """One model's samples (summed over versions; histogram buckets left out).

    Keys are sample names, with extra labels other than model/version appended
    in braces: ``inference_requests_total{code=OK}``.
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != model or s.name.endswith(("_bucket", "_created")):
                continue
            extra = {k: v for k, v in s.labels.items() if k not in ("model", "version")}
            key = s.name + (
                "{" + ",".join(f"{k}={v}" for k, v in sorted(extra.items())) + "}" if extra else ""
            )
            out[key] = out.get(key, 0.0) + s.value
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _mean_ms(delta: dict[str, float], hist: str) -> float | None:
    count = delta.get(f"{hist}_count", 0.0)
    return delta.get(f"{hist}_sum", 0.0) / count * 1e3 if count > 0 else None


def server_figures(delta: dict[str, float], window_s: float) -> dict:
    """Batching efficiency and mean queue/compute/end-to-end time from metric deltas."""
    inferences = delta.get("inference_count_total", 0.0)
    executions = delta.get("inference_exec_count_total", 0.0)
    compute_sum = delta.get("inference_compute_duration_seconds_sum", 0.0)
    return {
        "inference_count": inferences,
        "exec_count": executions,
        "batching_efficiency": inferences / executions if executions > 0 else None,
        "queue_ms_mean": _mean_ms(delta, "inference_queue_duration_seconds"),
        "compute_ms_mean": _mean_ms(delta, "inference_compute_duration_seconds"),
        "request_ms_mean": _mean_ms(delta, "inference_request_duration_seconds"),
        "preprocess_ms_mean": _mean_ms(delta, "inference_preprocess_duration_seconds"),
        # share of the window an instance spent inside run_batch
        "compute_busy_pct": 100 * compute_sum / window_s if window_s > 0 else None,
        "requests_by_code": {
            k.split("code=", 1)[1].rstrip("}"): v
            for k, v in delta.items()
            if k.startswith("inference_requests_total{") and v
        },
    }


def process_cpu_seconds(pid: int) -> float | None:
    """user+system CPU seconds of another process (Linux), None where unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float | None:
    """CPU seconds spent by every process on the machine since boot (Linux), else None.

    Its delta minus the client's and the server's CPU is what other processes
    took from the benchmark: the noise figure of a shared machine.
    """
    try:
        line = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --- the load itself ----------------------------------------------------------


def poisson_schedule(rate: float, duration: float, seed: int = 0) -> np.ndarray:
    """Arrival times (seconds from 0, sorted, all < duration) of a Poisson process."""
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be > 0, got {rate} and {duration}")
    rng = np.random.default_rng(seed)
    expected = rate * duration
    times = np.cumsum(rng.exponential(1 / rate, int(expected + 6 * expected**0.5 + 16)))
    while times[-1] < duration:  # astronomically rare: draw more
        more = times[-1] + np.cumsum(rng.exponential(1 / rate, len(times)))
        times = np.concatenate([times, more])
    return times[times < duration]


@dataclass
class _Window:
    """The timed window (perf_counter seconds) and what happened inside it."""

    start: float = float("inf")
    end: float = float("inf")
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    last_done: float = 0.0

    def record(self, sent: float, done: float, code: str | None, need_done_in: bool) -> None:
        if sent < self.start or (need_done_in and done > self.end):
            return
        if code is None:
            self.latencies.append(done - sent)
            self.last_done = max(self.last_done, done)
        else:
            self.errors[code] += 1


class _Probe:
    """Scrapes server metrics and CPU counters at the window's ends (off the event loop)."""

    def __init__(self, metrics_url: str | None, model: str | None, server_pid: int | None):
        self.metrics_url, self.model, self.server_pid = metrics_url, model, server_pid
        self.error: str | None = None

    def _take(self) -> tuple:
        metrics = None
        if self.metrics_url and self.model:
            try:
                metrics = parse_metrics(scrape(self.metrics_url), self.model)
            except Exception as exc:  # a level's figures must not die with the endpoint
                self.error = f"{type(exc).__name__}: {exc}"
        cpu = process_cpu_seconds(self.server_pid) if self.server_pid else None
        return time.perf_counter(), metrics, cpu, machine_cpu_seconds()

    async def take(self) -> tuple:
        """(perf_counter, metrics or None, server CPU s or None, machine CPU s or None)"""
        return await asyncio.to_thread(self._take)


def _channels(url: str, n: int) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS) for _ in range(n)]


def _as_list(requests: Requests) -> list[bytes]:
    out = [requests] if isinstance(requests, bytes | bytearray) else list(requests)
    if not out:
        raise ValueError("no requests to send")
    return out


def _summary(
    mode: str,
    window: _Window,
    window_s: float,
    batch_size: int,
    client_cpu_s: float,
    probe: _Probe,
    before: tuple,
    after: tuple,
) -> dict:
    requests = len(window.latencies)
    result: dict = {
        "mode": mode,
        "seconds": window_s,
        "batch_size": batch_size,
        "requests": requests,
        "errors": dict(window.errors),
        "error_count": sum(window.errors.values()),
        "throughput": requests * batch_size / window_s,
        "requests_per_s": requests / window_s,
        "client_cpu_pct": 100 * client_cpu_s / window_s,
        "latency": asdict(summarize(window.latencies, batch_size)) if requests else None,
    }
    (t0, m0, c0, all0), (t1, m1, c1, all1) = before, after
    result["server"] = (
        server_figures(metrics_delta(m0, m1), t1 - t0) if m0 is not None and m1 else None
    )
    result["server_cpu_pct"] = 100 * (c1 - c0) / (t1 - t0) if c0 is not None and c1 else None
    if all0 is not None and all1 is not None:
        result["machine_cpu_pct"] = 100 * (all1 - all0) / (t1 - t0)
        if result["server_cpu_pct"] is not None:
            result["other_cpu_pct"] = (
                result["machine_cpu_pct"] - result["server_cpu_pct"] - result["client_cpu_pct"]
            )
    if probe.error:
        result["metrics_error"] = probe.error
    return result


async def _closed_loop(
    url: str,
    requests: list[bytes],
    concurrency: int,
    seconds: float,
    warmup: float,
    batch_size: int,
    probe: _Probe,
    shared_channel: bool,
    timeout: float,
) -> dict:
    channels = _channels(url, 1 if shared_channel else concurrency)
    window = _Window()
    try:

        async def worker(i: int) -> None:
            call = channels[i % len(channels)].unary_unary(INFER_METHOD, request_serializer=None)
            n, clock, record = len(requests), time.perf_counter, window.record
            k = i
            while True:
                sent = clock()
                if sent >= window.end:
                    return
                try:
                    await call(requests[k % n], timeout=timeout)
                    code = None
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                record(sent, clock(), code, True)
                k += 1
                if code is not None:
                    await asyncio.sleep(0.001)  # no hot spin against a refusing server

        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(warmup)
        before = await probe.take()
        cpu0 = time.process_time()
        window.start = time.perf_counter()
        window.end = window.start + seconds
        await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
        cpu1 = time.process_time()
        after = await probe.take()
        await asyncio.gather(*tasks)
    finally:
        for channel in channels:
            await channel.close()
    result = _summary("closed", window, seconds, batch_size, cpu1 - cpu0, probe, before, after)
    return {"concurrency": concurrency, "channels": len(channels), **result}


async def _open_loop(
    url: str,
    requests: list[bytes],
    rate: float,
    seconds: float,
    warmup: float,
    batch_size: int,
    probe: _Probe,
    max_in_flight: int,
    channel_count: int,
    timeout: float,
    seed: int,
) -> dict:
    channels = _channels(url, channel_count)
    calls = [c.unary_unary(INFER_METHOD, request_serializer=None) for c in channels]
    window = _Window()
    lags: list[float] = []
    overflow = 0
    in_flight: set[asyncio.Task] = set()

    async def one(k: int, sent: float) -> None:
        try:
            await calls[k % len(calls)](requests[k % len(requests)], timeout=timeout)
            code = None
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        window.record(sent, time.perf_counter(), code, False)

    state: dict = {}

    async def control(t0: float) -> None:
        await asyncio.sleep(max(0.0, t0 + warmup - time.perf_counter()))
        state["before"] = await probe.take()
        state["cpu0"] = time.process_time()
        window.start = time.perf_counter()
        window.end = t0 + warmup + seconds

    try:
        arrivals = poisson_schedule(rate, warmup + seconds, seed)
        t0 = time.perf_counter()
        controller = asyncio.create_task(control(t0))
        for k, offset in enumerate(arrivals):
            due = t0 + offset
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            if now >= window.start:
                lags.append(now - due)
            if len(in_flight) >= max_in_flight:
                overflow += now >= window.start
                continue
            task = asyncio.create_task(one(k, now))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await controller
        await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
        if in_flight:
            await asyncio.gather(*in_flight)
        cpu1 = time.process_time()
        after = await probe.take()
    finally:
        for channel in channels:
            await channel.close()
    before, cpu0 = state["before"], state["cpu0"]
    # Answers that come after the window still count: the offered load is what matters.
    span = max(window.end, window.last_done) - window.start
    span = span if span > 0 else seconds
    result = _summary("open", window, span, batch_size, cpu1 - cpu0, probe, before, after)
    lag = np.asarray(lags or [0.0]) * 1e3
    return {
        "rate": rate,
        "channels": len(channels),
        **result,
        "sent": len(lags) - overflow,
        "offered_per_s": len(lags) / max(window.end - window.start, 1e-9),
        "client_overflow": overflow,
        "send_lag_ms_p50": float(np.percentile(lag, 50)),
        "send_lag_ms_p99": float(np.percentile(lag, 99)),
    }


def run_closed_loop(
    url: str,
    request_bytes: Requests,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    *,
    batch_size: int = 1,
    metrics_url: str | None = None,
    model: str | None = None,
    server_pid: int | None = None,
    shared_channel: bool = False,
    timeout: float = 60.0,
) -> dict:
    """``concurrency`` workers back to back for ``warmup`` + ``seconds``; one result dict.

    ``request_bytes``: one serialized ModelInferRequest or several (sent round robin);
    ``batch_size``: images per request (for images/s). Metrics need ``metrics_url``
    and ``model``; server CPU needs ``server_pid``.
    """
    if concurrency < 1 or seconds <= 0 or warmup < 0:
        raise ValueError("concurrency >= 1, seconds > 0 and warmup >= 0 required")
    probe = _Probe(metrics_url, model, server_pid)
    return asyncio.run(
        _closed_loop(
            url,
            _as_list(request_bytes),
            concurrency,
            seconds,
            warmup,
            batch_size,
            probe,
            shared_channel,
            timeout,
        )
    )


def run_open_loop(
    url: str,
    request_bytes: Requests,
    rate: float,
    seconds: float,
    warmup: float = 1.0,
    *,
    batch_size: int = 1,
    metrics_url: str | None = None,
    model: str | None = None,
    server_pid: int | None = None,
    max_in_flight: int = 1024,
    channels: int = 4,
    timeout: float = 60.0,
    seed: int = 0,
) -> dict:
    """Poisson arrivals at ``rate`` requests/s for ``warmup`` + ``seconds``; one result dict.

    A request is sent at its arrival time whatever is still in flight (up to
    ``max_in_flight``; beyond, it is counted as ``client_overflow`` and not sent).
    Requests sent in the window are awaited; throughput is over the window,
    stretched to the last answer when the server falls behind.
    """
    if rate <= 0 or seconds <= 0 or warmup < 0 or channels < 1:
        raise ValueError("rate > 0, seconds > 0, warmup >= 0 and channels >= 1 required")
    probe = _Probe(metrics_url, model, server_pid)
    return asyncio.run(
        _open_loop(
            url,
            _as_list(request_bytes),
            rate,
            seconds,
            warmup,
            batch_size,
            probe,
            max_in_flight,
            channels,
            timeout,
            seed,
        )
    )


# --- output -------------------------------------------------------------------


def flatten(row: dict, prefix: str = "") -> dict:
    """Nested result dict -> one flat CSV row (``latency.p50_ms``, ``errors.UNAVAILABLE``)."""
    out: dict = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def write(rows: list[dict], out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    flat = [flatten(r) for r in rows]
    fields: list[str] = []
    for row in flat:
        fields += [k for k in row if k not in fields]
    with open(out / "load.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat)
    (out / "load.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def table(rows: list[dict], title: str = "load") -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in (
        "level",
        "requests",
        "errors",
        "img/s",
        "p50 ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "client CPU",
        "server CPU",
        "other CPU",
        "batch eff.",
        "queue ms",
        "compute ms",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        lat = r["latency"] or {}
        srv = r["server"] or {}
        level = f"c={r['concurrency']}" if r["mode"] == "closed" else f"{r['rate']:g}/s"
        errors = ", ".join(f"{k}:{v}" for k, v in r["errors"].items()) or "0"
        t.add_row(
            level,
            str(r["requests"]),
            errors,
            f"{r['throughput']:.1f}",
            _fmt(lat.get("p50_ms")),
            _fmt(lat.get("p90_ms")),
            _fmt(lat.get("p95_ms")),
            _fmt(lat.get("p99_ms")),
            f"{r['client_cpu_pct']:.0f}%",
            _pct(r.get("server_cpu_pct")),
            _pct(r.get("other_cpu_pct")),
            _fmt(srv.get("batching_efficiency")),
            _fmt(srv.get("queue_ms_mean")),
            _fmt(srv.get("compute_ms_mean")),
        )
    console = Console()
    if not console.is_terminal:  # pipes and files: do not squeeze to 80 columns
        console = Console(width=160)
    console.print(t)


# --- command line ---------------------------------------------------------------


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
    p.add_argument("--url", default="127.0.0.1:8001")
    p.add_argument("--model", required=True)
    p.add_argument("--model-version", default="")
    p.add_argument("--concurrency", default="1,2,4,8", help="closed-loop levels")
    p.add_argument("--rate", default=None, help="open-loop levels, requests/s (replaces closed)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed window per level")
    p.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per level")
    p.add_argument("--batch", type=int, default=1, help="images per request")
    p.add_argument("--images", nargs="+", type=Path, help="send these encoded images (BYTES)")
    p.add_argument("--metrics-url", default=DEFAULT_METRICS_URL, help="'' to skip metrics")
    p.add_argument("--server-pid", type=int, default=None, help="report the server's CPU too")
    p.add_argument("--shared-channel", action="store_true", help="one channel for all workers")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request deadline (s)")
    p.add_argument("--out", type=Path, default=None, help="write load.json and load.csv here")
    a = p.parse_args(argv)
    if a.batch < 1:
        p.error("--batch must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    info = model_info(a.url, a.model, a.model_version)
    if a.batch > info.max_batch_size:
        raise SystemExit(f"--batch {a.batch} exceeds max_batch_size {info.max_batch_size}")
    if a.images:
        requests = image_requests(info, [p.read_bytes() for p in a.images], a.batch)
    else:
        requests = [tensor_request(info, a.batch)]
    response = check_request(a.url, requests[0], a.timeout)
    print(
        f"{a.model}: input {info.input_name} {[a.batch, *info.input_shape]}"
        f" ({'images' if a.images else 'FP32'}, {len(requests[0]):,} bytes/request),"
        f" outputs {[o.name for o in response.outputs]}"
    )
    common = dict(
        batch_size=a.batch,
        metrics_url=a.metrics_url or None,
        model=a.model,
        server_pid=a.server_pid,
        timeout=a.timeout,
    )
    rows = []
    if a.rate:
        for rate in _numbers(a.rate, float, "--rate"):
            rows.append(run_open_loop(a.url, requests, rate, a.seconds, a.warmup, **common))
    else:
        for n in _numbers(a.concurrency, int, "--concurrency"):
            rows.append(
                run_closed_loop(
                    a.url,
                    requests,
                    n,
                    a.seconds,
                    a.warmup,
                    shared_channel=a.shared_channel,
                    **common,
                )
            )
    for r in rows:
        if r.get("metrics_error"):
            print(f"metrics: {r['metrics_error']}", file=sys.stderr)
    table(rows, title=f"{a.model} at {a.url}, batch {a.batch}")
    if a.out:
        meta = {"url": a.url, "model": a.model, "batch": a.batch, "argv": sys.argv[1:]}
        write(rows, a.out, meta)
        print(f"wrote {a.out / 'load.json'} and {a.out / 'load.csv'}")
    return 1 if any(r["error_count"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
