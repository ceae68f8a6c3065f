"""Helpers for the suites that try to break the server: memory of the server
process, Prometheus samples, and a background stream of valid requests whose
every outcome is kept (the proof that the server kept serving meanwhile)."""

from __future__ import annotations

import io
import re
import struct
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from protos import grpc_service_pb2 as pb
from tests.kit.serving import ServerProcess


def _status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert found, f"no {field} in /proc/{pid}/status"
    return int(found.group(1))


def rss_mib(pid: int) -> float:
    """Resident memory now."""
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    """The highest resident memory since the start or ``reset_peak_rss`` (VmHWM)."""
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak_rss(pid: int) -> None:
    """Make VmHWM the current RSS again (Linux >= 4.0), so a later peak shows."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def metric(srv: ServerProcess, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    text = urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 30, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class ValidStream:
    """Threads sending valid requests until stopped; ``outcomes`` counts codes.

    ``refusals`` are codes that mean "not accepted" (e.g. UNAVAILABLE while a
    model is unloaded); anything else that is not OK is a failure.
    """

    def __init__(
        self,
        srv: ServerProcess,
        requests: list[pb.ModelInferRequest],
        threads: int = 1,
        timeout: float = 60,
        pause: float = 0.0,
    ) -> None:
        self.srv, self.requests, self.timeout, self.pause = srv, requests, timeout, pause
        self.outcomes: Counter[str] = Counter()
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        stub = self.srv.stub()
        i = index
        while not self._stop.is_set():
            request = self.requests[i % len(self.requests)]
            i += 1
            try:
                stub.ModelInfer(request, timeout=self.timeout)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
                with self._lock:
                    self.messages.append(f"{code}: {exc.details()}")
            with self._lock:
                self.outcomes[code] += 1
            if self.pause:
                self._stop.wait(self.pause)

    def __enter__(self) -> ValidStream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Counter[str]:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        return self.outcomes

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.outcomes)

    def failures(self, refusals: tuple[str, ...] = ()) -> list[str]:
        with self._lock:
            return [m for m in self.messages if m.split(":", 1)[0] not in refusals]


# --- images -----------------------------------------------------------------
def encoded(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB", **save: Any) -> bytes:
    """A small asymmetric colour picture in ``fmt``/``mode``."""
    ramp = np.add.outer(np.arange(size[1]), np.arange(size[0])).astype(np.uint8) * 3
    image = Image.fromarray(np.stack([ramp, ramp[::-1], 255 - ramp], axis=-1)).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def image_request(
    elements: list[bytes], shape: list[int] | None = None, raw: bool = False
) -> pb.ModelInferRequest:
    """A BYTES request of encoded images to mobilenet_v2."""
    req = pb.ModelInferRequest(model_name="mobilenet_v2")
    tensor = req.inputs.add(name="input", datatype="BYTES", shape=shape or [len(elements)])
    if raw:
        req.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in elements))
    else:
        tensor.contents.bytes_contents.extend(elements)
    return req


def flip(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for p in positions:
        out[p % len(out)] ^= 0xFF
    return bytes(out)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data))
    return struct.pack(">I", len(data)) + kind + data + crc


def png_bomb(width: int, height: int, pixels: bool = False) -> bytes:
    """An 8-bit greyscale PNG declaring width x height pixels: with ``pixels`` its
    IDAT really inflates to all of them (a decompression bomb), else it is a header."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    packer = zlib.compressobj(9)
    if pixels:
        row = bytes(width + 1)  # filter byte + one zero byte per pixel
        idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    else:
        idat = packer.compress(bytes(16)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def bmp_bomb(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring width x height pixels, with no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def report(config: Any, line: str) -> None:
    """Print a measured figure in pytest's output (past output capturing)."""
    plugins = config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
