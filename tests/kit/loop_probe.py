"""How long the server's event loop stood still: a cheap request every ~10 ms.

A thread sends ``GET /v2/health/live`` over one keep-alive connection (a fresh one
when the server closed it), waits ~10 ms, and keeps the slowest answer. The health
handler does nothing, so its latency is the time the loop took to get to it: while
something large runs on the loop, HTTP and gRPC alike wait that long. The memory
side: the server's and its children's resident memory, sampled at the same pace.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from types import TracebackType

PERIOD = 0.01
STALL_LIMIT = 0.2  # seconds: above this a hostile request is freezing everyone


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its child processes (the JSON workers)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


class LoopProbe(threading.Thread):
    """``with LoopProbe(port, pid) as probe: ...``; then ``probe.worst`` (seconds)."""

    def __init__(self, port: int, pid: int | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.pid = host, port, pid
        self.worst = 0.0
        self.answers = 0
        self.errors: list[str] = []
        self.rss_start = tree_rss_mib(pid) if pid else 0.0
        self.rss_peak = self.rss_start
        self._stop_event = threading.Event()
        self._first = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        while not self._stop_event.is_set():
            started = time.perf_counter()
            try:
                conn.request("GET", "/v2/health/live")
                status = conn.getresponse().read() and 200
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                continue
            self.worst = max(self.worst, time.perf_counter() - started)
            self.answers += status > 0
            self._first.set()
            if self.pid:
                self.rss_peak = max(self.rss_peak, tree_rss_mib(self.pid))
            self._stop_event.wait(PERIOD)
        conn.close()

    def __enter__(self) -> LoopProbe:
        self.start()
        assert self._first.wait(30), f"the probe got no answer: {self.errors[-3:]}"
        self.worst = 0.0  # the first answer includes connecting
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop_event.set()
        self.join(90)

    def summary(self) -> str:
        return (
            f"worst loop stall {self.worst * 1000:.0f} ms over {self.answers} probes; "
            f"RSS {self.rss_start:.0f} -> peak {self.rss_peak:.0f} MiB"
        )
