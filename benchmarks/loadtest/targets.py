"""The servers benchmarks/overhead.py measures: ours and, per model and protocol, its floor.

Each pair shares one request, built once: our server's answer to it becomes the floor's
fixed response (checked to come back unchanged before any timing), so both send the
same bytes each way. Every server started here is stopped by pid when the caller's
ExitStack closes.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from benchmarks.common.zoo import ensure_exported
from benchmarks.loadtest.floor import start_floor
from benchmarks.loadtest.http_loadgen import (
    HEADER_LENGTH,
    HttpRequest,
    binary_request,
    check_http,
    run_http_closed_loop,
)
from benchmarks.loadtest.infer_requests import (
    CHANNEL_OPTIONS,
    INFER_METHOD,
    ModelInfo,
    model_info,
    tensor_request,
)
from benchmarks.loadtest.loadgen import run_closed_loop
from devtools.launch import Launched, launch

KIND = {
    "ours": "python -m server",
    "grpc": "bare grpc.aio",
    "grpc+thread": "bare grpc.aio, thread hop",
    "http": "bare aiohttp",
}
Load = Callable[[int, float, float], dict]  # (clients, seconds, warm-up) -> result dict


@dataclass(frozen=True)
class Target:
    """One server loaded for one model over one protocol."""

    server: str  # "ours" or "floor"
    protocol: str
    model: str
    pid: int
    load: Load
    hop: str = "none"  # the gRPC floor's (``--grpc-floor``)

    @property
    def kind(self) -> str:
        if self.server == "ours":
            return KIND["ours"]
        return KIND[self.protocol + ("" if self.hop == "none" else f"+{self.hop}")]


def _grpc_answer(url: str, request: bytes, timeout: float) -> bytes:
    """The raw ModelInferResponse bytes a server answers to ``request``."""
    with grpc.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(
            INFER_METHOD, request_serializer=None, response_deserializer=None
        )
        return call(request, timeout=timeout)


def _http_answer(url: str, request: HttpRequest, who: str) -> tuple[bytes, dict[str, str]]:
    reply = check_http(url, request)
    if reply.status != 200:
        raise SystemExit(f"{who} answered HTTP {reply.status}: {reply.body[:300]!r}")
    wanted = {"content-type", HEADER_LENGTH.lower()}
    return reply.body, {k: v for k, v in reply.headers.items() if k.lower() in wanted}


def _started(stack: contextlib.ExitStack, server: Launched) -> Launched:
    stack.callback(server.terminate)
    return server


def _grpc_pair(
    a: argparse.Namespace, stack: contextlib.ExitStack, ours: Launched, info: ModelInfo
) -> tuple[Target, Target]:
    request = tensor_request(info)
    answer = _grpc_answer(ours.url, request, a.timeout)
    floor = _started(stack, start_floor("grpc", answer, a.out / "floors", hop=a.grpc_floor))
    if _grpc_answer(floor.url, request, a.timeout) != answer:
        raise SystemExit(f"the bare grpc.aio server did not answer its fixed bytes; {floor.log}")

    def load(url: str, pid: int) -> Load:
        return lambda n, s, w: run_closed_loop(
            url, request, n, s, w, server_pid=pid, timeout=a.timeout
        )

    return (
        Target("ours", "grpc", info.name, ours.proc.pid, load(ours.url, ours.proc.pid)),
        Target(
            "floor",
            "grpc",
            info.name,
            floor.proc.pid,
            load(floor.url, floor.proc.pid),
            a.grpc_floor,
        ),
    )


def _http_pair(
    a: argparse.Namespace, stack: contextlib.ExitStack, ours: Launched, info: ModelInfo
) -> tuple[Target, Target]:
    if ours.http_port < 0:
        raise SystemExit("our server runs without HTTP (--server-args turned it off?)")
    request = binary_request(info)
    body, headers = _http_answer(ours.http_url, request, "our server")
    floor = _started(stack, start_floor("http", body, a.out / "floors", headers))
    if _http_answer(floor.http_url, request, "the bare aiohttp server")[0] != body:
        raise SystemExit(f"the bare aiohttp server did not answer its fixed body; {floor.log}")

    def load(url: str, pid: int) -> Load:
        return lambda n, s, w: run_http_closed_loop(
            url, request, n, s, w, server_pid=pid, timeout=a.timeout
        )

    return (
        Target("ours", "http", info.name, ours.proc.pid, load(ours.http_url, ours.proc.pid)),
        Target("floor", "http", info.name, floor.proc.pid, load(floor.http_url, floor.proc.pid)),
    )


def prepare(
    a: argparse.Namespace, stack: contextlib.ExitStack
) -> tuple[Launched, list[tuple[Target, Target]]]:
    """Our server and, per model and protocol, its floor: the (ours, floor) pairs."""
    names = [ensure_exported(m, a.repository, log=print).name for m in a.model_names]
    flags = [arg for name in names for arg in ("--model", name)]
    log = a.out / "overhead-server.log"
    print(f"starting our server on {a.repository}; log {log}", flush=True)
    ours = _started(stack, launch(a.repository, *flags, *shlex.split(a.server_args), log=log))
    pairs = []
    for name in names:
        info = model_info(ours.url, name)
        for protocol in a.protocol_names:
            make = _grpc_pair if protocol == "grpc" else _http_pair
            pairs.append(make(a, stack, ours, info))
    return ours, pairs
