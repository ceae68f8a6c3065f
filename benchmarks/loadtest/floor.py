"""The transport's floor: bare servers answering every inference with one fixed response.

A bare ``grpc.aio`` server (a generic handler with identity (de)serializers: the request
bytes are never parsed) and a bare aiohttp server (POST /v2/models/{model}/infer: the
body read, then a fixed reply), each in a child process of its own, each answering with
the bytes our server returned to the same request. Their CPU per request is what the
transport costs on its own: the floor under our server's own code. With ``--hop thread``
the gRPC floor answers from a worker thread instead: the least any server whose batches
run on a thread pays.

    python -m benchmarks.loadtest.floor grpc RESPONSE_FILE [--hop thread]
    python -m benchmarks.loadtest.floor http RESPONSE_FILE --header NAME=VALUE ...

The child binds port 0 on 127.0.0.1 (the kernel picks a free port) and prints
``ready: port N``, which ``start_floor`` waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from aiohttp import web

from devtools.launch import Launched

ROOT = Path(__file__).resolve().parents[2]  # the checkout: benchmarks/ is not installed
SERVICE = "inference.GRPCInferenceService"
MAX_MESSAGE_BYTES = 64 << 20  # the server's default message limit
READY = re.compile(r"^ready: port (\d+)$", re.MULTILINE)
KINDS = ("grpc", "http")
HOPS = ("none", "thread")  # gRPC: answer on the loop, or after a worker thread's hop


def _thread_hop(response: bytes) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    """A handler that hands each request to one worker thread and awaits its answer there:
    what any server with a batch worker pays at the least (one queue put, one wake-up,
    one ``call_soon_threadsafe`` per batch the worker drains), with no work in between."""
    loop = asyncio.get_running_loop()
    jobs: queue.SimpleQueue[asyncio.Future[bytes]] = queue.SimpleQueue()

    def settle(futures: list[asyncio.Future[bytes]]) -> None:
        for future in futures:
            if not future.done():
                future.set_result(response)

    def worker() -> None:
        while True:
            drained = [jobs.get()]
            while not jobs.empty():
                drained.append(jobs.get_nowait())
            loop.call_soon_threadsafe(settle, drained)

    threading.Thread(target=worker, name="floor-hop", daemon=True).start()

    async def infer(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        future = loop.create_future()
        jobs.put(future)
        return await future

    return infer


async def _serve_grpc(response: bytes, hop: str = "none") -> None:
    async def bare(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return response

    handler = grpc.unary_unary_rpc_method_handler(
        _thread_hop(response) if hop == "thread" else bare,
        request_deserializer=None,
        response_serializer=None,
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"ready: port {port}", flush=True)
    await server.wait_for_termination()


async def _serve_http(response: bytes, headers: dict[str, str]) -> None:
    async def infer(request: web.Request) -> web.Response:
        await request.read()  # receiving the body is part of the transport's cost
        return web.Response(body=response, headers=headers)

    app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
    app.router.add_post("/v2/models/{model}/infer", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]
    print(f"ready: port {port}", flush=True)
    await asyncio.Event().wait()  # until SIGTERM ends the process


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("response", type=Path, help="the fixed response body")
    p.add_argument("--header", action="append", default=[], help="NAME=VALUE (http)")
    p.add_argument("--hop", choices=HOPS, default="none", help="grpc: via a worker thread")
    a = p.parse_args(argv)
    body = a.response.read_bytes()
    if a.kind == "grpc":
        asyncio.run(_serve_grpc(body, a.hop))
    else:
        asyncio.run(_serve_http(body, dict(h.split("=", 1) for h in a.header)))
    return 0


def start_floor(
    kind: str,
    response: bytes,
    folder: Path,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
    hop: str = "none",
) -> Launched:
    """A bare ``kind`` server answering ``response`` (and ``headers``), once it listens;
    ``hop="thread"`` (gRPC): each answer comes back from a worker thread (``_thread_hop``).

    The handle's ``url`` (gRPC) or ``http_url`` (HTTP) reaches it; ``terminate()`` stops it.
    """
    if kind not in KINDS:
        raise ValueError(f"floor kind {kind!r} is not one of {KINDS}")
    if hop not in HOPS or (hop != "none" and kind != "grpc"):
        raise ValueError(f"floor hop {hop!r} is not one of {HOPS} (a hop is gRPC's only)")
    folder.mkdir(parents=True, exist_ok=True)
    body = folder / f"floor-{kind}-{time.monotonic_ns()}.bin"
    body.write_bytes(response)
    log = body.with_suffix(".log")
    flags = [f"--header={k}={v}" for k, v in (headers or {}).items()] + [f"--hop={hop}"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loadtest.floor", kind, str(body), *flags],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        port = _wait_ready(proc, log, timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if kind == "grpc":
        return Launched(proc, port, -1, log)
    return Launched(proc, -1, -1, log, http_port=port)


def _wait_ready(proc: subprocess.Popen[str], log: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = READY.search(log.read_text())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"floor server exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    raise TimeoutError(f"floor server not ready after {timeout}s:\n{log.read_text()}")


if __name__ == "__main__":
    sys.exit(main())
