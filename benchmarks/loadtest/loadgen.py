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
from collections.abc import Coroutine, Sequence
from typing import Any

import grpc
import numpy as np

from benchmarks.loadtest.infer_requests import CHANNEL_OPTIONS, INFER_METHOD, STREAM_METHOD
from benchmarks.loadtest.window import Probe, Window, closed_window, summary

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


def _channels(url: str, n: int) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS) for _ in range(n)]


def _as_list(requests: Requests) -> list[bytes]:
    out = [requests] if isinstance(requests, bytes | bytearray) else list(requests)
    if not out:
        raise ValueError("no requests to send")
    return out


async def _unary_worker(
    channel: grpc.aio.Channel, requests: list[bytes], window: Window, first: int, timeout: float
) -> None:
    """Send the next request as soon as the previous answer arrives, until the window ends."""
    call = channel.unary_unary(INFER_METHOD, request_serializer=None)
    n, clock, record = len(requests), time.perf_counter, window.record
    k = first
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


async def _stream_worker(
    channel: grpc.aio.Channel, requests: list[bytes], window: Window, first: int
) -> None:
    """As ``_unary_worker`` over one ModelStreamInfer stream, reopened when it fails."""
    opener = channel.stream_stream(
        STREAM_METHOD, request_serializer=None, response_deserializer=None
    )
    n, clock, record = len(requests), time.perf_counter, window.record
    k, call = first, opener()
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


async def _closed_loop(
    url: str,
    requests: list[bytes],
    concurrency: int,
    seconds: float,
    warmup: float,
    batch_size: int,
    probe: Probe,
    shared_channel: bool,
    timeout: float,
    streaming: bool,
) -> dict:
    channels = _channels(url, 1 if shared_channel else concurrency)
    window = Window()
    try:

        def worker(i: int) -> Coroutine[Any, Any, None]:
            channel = channels[i % len(channels)]
            if streaming:
                return _stream_worker(channel, requests, window, i)
            return _unary_worker(channel, requests, window, i, timeout)

        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        cpu_s, before, after = await closed_window(tasks, window, probe, seconds, warmup)
    finally:
        for channel in channels:
            await channel.close()
    result = summary("closed", window, seconds, batch_size, cpu_s, probe, before, after)
    return {
        "concurrency": concurrency,
        "channels": len(channels),
        "streaming": streaming,
        **result,
    }


class _Arrivals:
    """Open-loop sending: each arrival becomes a task, whatever is still in flight."""

    def __init__(
        self,
        calls: list[grpc.aio.UnaryUnaryMultiCallable],
        requests: list[bytes],
        window: Window,
        timeout: float,
        max_in_flight: int,
    ) -> None:
        self.calls, self.requests, self.window = calls, requests, window
        self.timeout, self.max_in_flight = timeout, max_in_flight
        self.lags: list[float] = []  # send time - due time, of arrivals inside the window
        self.overflow = 0  # arrivals inside the window not sent: max_in_flight reached
        self.in_flight: set[asyncio.Task] = set()

    async def _one(self, k: int, sent: float) -> None:
        try:
            await self.calls[k % len(self.calls)](
                self.requests[k % len(self.requests)], timeout=self.timeout
            )
            code = None
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        self.window.record(sent, time.perf_counter(), code, False)

    async def send(self, arrivals: np.ndarray, t0: float) -> None:
        """Send arrival k at ``t0 + arrivals[k]`` (or as soon after as the loop allows)."""
        window, in_flight = self.window, self.in_flight
        for k, offset in enumerate(arrivals):
            due = t0 + offset
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            if now >= window.start:
                self.lags.append(now - due)
            if len(in_flight) >= self.max_in_flight:
                self.overflow += now >= window.start
                continue
            task = asyncio.create_task(self._one(k, now))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)


async def _open_window(
    window: Window, probe: Probe, t0: float, warmup: float, seconds: float
) -> tuple[tuple, float]:
    """Open the window after the warm-up; returns the probe and process CPU at its start."""
    await asyncio.sleep(max(0.0, t0 + warmup - time.perf_counter()))
    before = await probe.take()
    cpu0 = time.process_time()
    window.start = time.perf_counter()
    window.end = t0 + warmup + seconds
    return before, cpu0


async def _open_loop(
    url: str,
    requests: list[bytes],
    rate: float,
    seconds: float,
    warmup: float,
    batch_size: int,
    probe: Probe,
    max_in_flight: int,
    channel_count: int,
    timeout: float,
    seed: int,
) -> dict:
    channels = _channels(url, channel_count)
    calls = [c.unary_unary(INFER_METHOD, request_serializer=None) for c in channels]
    window = Window()
    sender = _Arrivals(calls, requests, window, timeout, max_in_flight)
    try:
        arrivals = poisson_schedule(rate, warmup + seconds, seed)
        t0 = time.perf_counter()
        controller = asyncio.create_task(_open_window(window, probe, t0, warmup, seconds))
        await sender.send(arrivals, t0)
        before, cpu0 = await controller
        await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
        if sender.in_flight:
            await asyncio.gather(*sender.in_flight)
        cpu1 = time.process_time()
        after = await probe.take()
    finally:
        for channel in channels:
            await channel.close()
    # Answers that come after the window still count: the offered load is what matters.
    span = max(window.end, window.last_done) - window.start
    span = span if span > 0 else seconds
    result = summary("open", window, span, batch_size, cpu1 - cpu0, probe, before, after)
    lags, overflow = sender.lags, sender.overflow
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
    probe = Probe(metrics_url, model, server_pid)
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
    probe = Probe(metrics_url, model, server_pid)
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
