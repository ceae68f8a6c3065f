"""Large JSON parsed and written in worker processes, never on the event loop.

A thread is not enough: ``json.loads`` and ``json.dumps`` run in C without letting go
of the GIL, so a 10 MB body parsed on a thread still stalls the loop (and with it
gRPC, HTTP and health) for its whole 0.24 s; a 60 MiB binary-extension header stalled
it 2.2 s, six large bodies at once 7.3 s. Bodies whose JSON is at most
``json_on_loop_kb`` are handled in place (well under a millisecond); larger ones go
to a small ``ProcessPoolExecutor`` (spawned, so no gRPC threads are forked), whose
answer comes back as the pickled request (numpy arrays, bytes): a copy, not a parse
of text.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import signal
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from aiohttp import web

from server.core.errors import Unavailable
from server.core.messages import InferResponse
from server.http import answers, codec
from server.http.budgets import Budgets
from server.settings.limits import HttpLimits, RequestLimits

log = logging.getLogger(__name__)

_WORKER_NICENESS = 10
_JSON_PER_RAW_BYTE = 3  # an FP32 (4 bytes) printed in JSON takes ~12 characters


def _worker_setup() -> None:
    """Ctrl-C reaches the whole process group: the parent decides, workers carry on.
    Workers yield the CPU to the server's own process (its event loop and inference)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(_WORKER_NICENESS)


def _parse_file(path: Path, model: str, version: str, limits: RequestLimits) -> codec.InferCall:
    return codec.parse_infer(path.read_bytes(), None, model, version, limits)


def _spool_directory(size: int) -> Path:
    """tmpfs where it has room (a container's /dev/shm is often 64 MB): spooled bodies
    stay in memory, as they were before; else the temporary directory."""
    shm = Path("/dev/shm")
    try:
        stats = os.statvfs(shm)
        if os.access(shm, os.W_OK) and stats.f_bavail * stats.f_frsize > 2 * size:
            return shm
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def _binary(outputs: dict[str, bool], default: bool, name: str) -> bool:
    return outputs.get(name, default)


class JsonOffload:
    """Parse and encode REST inference bodies, off the loop when their JSON is large."""

    def __init__(self, limits: HttpLimits) -> None:
        self.bound = limits.json_on_loop_bytes
        self.workers = limits.json_workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_worker_setup
            )
        return self._pool

    async def _off_loop(self, fn, *args):  # noqa: ANN001, ANN202 (any picklable call)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor(), fn, *args)
        except BrokenProcessPool as exc:  # a worker died (killed for memory): start afresh
            self._pool = None
            log.error("JSON worker process died: %s", exc)
            raise Unavailable("the JSON worker process died; retry the request") from exc

    async def parse(
        self, request: web.Request, reader: Budgets, limits: RequestLimits
    ) -> codec.InferCall:
        """``codec.parse_infer`` of the request's body: in place when its JSON is small;
        else the body is spooled to a file as it arrives and parsed in a worker."""
        model, version = request.match_info["name"], request.match_info.get("version", "")
        header_length = request.headers.get(codec.HEADER_LENGTH)
        length = request.content_length
        if header_length is None and length is not None and length > self.bound:
            path = await reader.spool_body(request, _spool_directory(length))
            try:
                return await self._off_loop(_parse_file, path, model, version, limits)
            finally:
                path.unlink(missing_ok=True)
        body = await reader.read_body(request)
        size = int(header_length) if header_length and header_length.isdigit() else len(body)
        args = (body, header_length, model, version, limits)
        if min(size, len(body)) <= self.bound:
            return codec.parse_infer(*args)
        return await self._off_loop(codec.parse_infer, *args)  # a chunked or mixed body

    async def encode(
        self, answer: InferResponse, call: codec.InferCall
    ) -> tuple[bytes, int | None]:
        """``answers.encode_infer``, in a worker when the JSON answer would be large."""
        binary = functools.partial(_binary, dict(call.binary_outputs), call.binary_default)
        if answers.json_weight(answer, binary) * _JSON_PER_RAW_BYTE <= self.bound:
            return answers.encode_infer(answer, binary)
        return await self._off_loop(answers.encode_infer, answer, binary)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
