"""The load itself: closed-loop workers and open-loop Poisson arrivals over grpc.aio.

Closed loop (``run_closed_loop``): N workers, each sending its next request
as soon as the previous answer arrives. Open loop (``run_open_loop``):
Poisson arrivals at R requests/s, whatever the answers do. Requests are
pre-serialized bytes sent through a generic unary call and answers are not
parsed, so the client costs little CPU on a machine it shares with the
server. Each level gets an uncounted warm-up, then a timed window; a request
counts when it was sent inside the window and (closed loop) answered inside
it. The server's metrics and CPU counters are read at both ends of the
window. With ``streaming``, each closed-loop worker keeps one ModelStreamInfer
stream open and sends its next request when the previous answer arrives, as
perf_analyzer's ``--streaming`` does; a stream has one deadline for its whole
life, so the per-request timeout does not apply there. This module never
imports torch, ONNX Runtime or tritonclient.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np

from benchmarks.common.machine import machine_cpu_seconds, process_cpu_seconds, thread_cpu_seconds
from benchmarks.common.stats import summarize
from benchmarks.loadtest.infer_requests import CHANNEL_OPTIONS, INFER_METHOD, STREAM_METHOD
from benchmarks.loadtest.server_metrics import metrics_delta, parse_metrics, scrape, server_figures

Requests = bytes | Sequence[bytes]
# A ModelStreamInferResponse is serialized in field order, so an answer that starts with
# field 1 (error_message, a length-delimited string: tag byte 0x0A) is a failed request.
_STREAM_ERROR_TAG = b"\x0a"


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
        pid = self.server_pid
        cpu = process_cpu_seconds(pid) if pid else None
        loop = thread_cpu_seconds(pid, pid) if pid else None
        return time.perf_counter(), metrics, cpu, loop, machine_cpu_seconds()

    async def take(self) -> tuple:
        """(perf_counter, metrics, server CPU s, its main thread's CPU s, machine CPU s);
        each but the first None where unavailable."""
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
    (t0, m0, c0, loop0, all0), (t1, m1, c1, loop1, all1) = before, after
    result["server"] = (
        server_figures(metrics_delta(m0, m1), t1 - t0) if m0 is not None and m1 else None
    )
    result["server_cpu_pct"] = 100 * (c1 - c0) / (t1 - t0) if c0 is not None and c1 else None
    result["server_loop_cpu_pct"] = (
        100 * (loop1 - loop0) / (t1 - t0) if loop0 is not None and loop1 is not None else None
    )
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
    streaming: bool,
) -> dict:
    channels = _channels(url, 1 if shared_channel else concurrency)
    window = _Window()
    try:

        async def stream_worker(i: int) -> None:
            opener = channels[i % len(channels)].stream_stream(
                STREAM_METHOD, request_serializer=None, response_deserializer=None
            )
            n, clock, record = len(requests), time.perf_counter, window.record
            k, call = i, opener()
            try:
                while (sent := clock()) < window.end:
                    try:
                        await call.write(requests[k % n])
                        answer = await call.read()
                        code = None
                        if answer is grpc.aio.EOF:
                            code, call = "STREAM_ENDED", opener()
                        elif answer[:1] == _STREAM_ERROR_TAG:
                            code = "STREAM_ERROR"
                    except grpc.aio.AioRpcError as exc:
                        code, call = exc.code().name, opener()
                    record(sent, clock(), code, True)
                    k += 1
                    if code is not None:
                        await asyncio.sleep(0.001)
            finally:
                call.cancel()

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

        run = stream_worker if streaming else worker
        tasks = [asyncio.create_task(run(i)) for i in range(concurrency)]
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
    return {
        "concurrency": concurrency,
        "channels": len(channels),
        "streaming": streaming,
        **result,
    }


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
    streaming: bool = False,
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
            streaming,
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
