"""Closed-loop load over HTTP/REST with Triton's binary tensor extension (aiohttp client).

The HTTP twin of ``loadgen.run_closed_loop``: N workers, each with its own keep-alive
connection, each sending its next request as soon as the previous answer is read; the
same timed window, server probes and result dict (``window.summary``). The request is
built once (a JSON header naming the input's ``binary_data_size``, then the raw FP32
bytes; ``binary_data_output`` asks for raw outputs back), so the client does no JSON or
tensor work per request.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import aiohttp
import numpy as np

from benchmarks.loadtest.infer_requests import ModelInfo
from benchmarks.loadtest.window import Probe, Window, closed_window, summary

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class HttpRequest:
    """One inference request, ready to send: path, body and headers."""

    path: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes
    headers: dict[str, str]


def binary_request(info: ModelInfo, batch: int = 1, seed: int = 0) -> HttpRequest:
    """A POST /v2/models/<model>/infer carrying a raw FP32 tensor (the binary extension)."""
    shape = [batch, *info.input_shape]
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": info.input_name,
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    version = f"/versions/{info.version}" if info.version else ""
    return HttpRequest(
        f"/v2/models/{info.name}{version}/infer",
        header + raw,
        {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
    )


def check_http(base_url: str, request: HttpRequest, timeout: float = 30) -> HttpReply:
    """Send one request (before any timing) and return the answer, whatever its status."""
    req = urllib.request.Request(
        base_url + request.path, data=request.body, headers=request.headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpReply(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as err:
        return HttpReply(err.code, err.read(), dict(err.headers))


async def _worker(url: str, request: HttpRequest, window: Window, timeout: float) -> None:
    """Send the next request as soon as the previous answer is read, until the window ends."""
    clock, record = time.perf_counter, window.record
    connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection per worker
    limits = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=limits) as session:
        while (sent := clock()) < window.end:
            try:
                async with session.post(url, data=request.body, headers=request.headers) as resp:
                    await resp.read()
                    code = None if resp.status == 200 else f"HTTP_{resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                code = type(exc).__name__
            record(sent, clock(), code, True)
            if code is not None:
                await asyncio.sleep(0.001)  # no hot spin against a refusing server


async def _closed_loop(
    url: str, request: HttpRequest, concurrency: int, seconds: float, warmup: float,
    probe: Probe, timeout: float,
) -> dict:  # fmt: skip
    window = Window()
    tasks = [
        asyncio.create_task(_worker(url, request, window, timeout)) for _ in range(concurrency)
    ]
    try:
        cpu_s, before, after = await closed_window(tasks, window, probe, seconds, warmup)
    finally:
        for task in tasks:
            task.cancel()
    result = summary("closed", window, seconds, 1, cpu_s, probe, before, after)
    return {"concurrency": concurrency, "channels": concurrency, "streaming": False, **result}


def run_http_closed_loop(
    base_url: str,
    request: HttpRequest,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    *,
    server_pid: int | None = None,
    timeout: float = 60.0,
) -> dict:
    """``concurrency`` HTTP workers back to back for ``warmup`` + ``seconds``; one result dict
    with the keys of ``loadgen.run_closed_loop``'s (server CPU needs ``server_pid``)."""
    if concurrency < 1 or seconds <= 0 or warmup < 0:
        raise ValueError("concurrency >= 1, seconds > 0 and warmup >= 0 required")
    probe = Probe(None, None, server_pid)
    return asyncio.run(
        _closed_loop(base_url + request.path, request, concurrency, seconds, warmup, probe, timeout)
    )
