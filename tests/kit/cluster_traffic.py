"""tritonclient traffic through a cluster node, in a child process (cluster_client.py
traffic): its stdout lines waited on with deadlines, never sleeps."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.kit import KIT
from tests.kit.ray_netns import ROOT

CLIENT = KIT / "cluster_client.py"
WAIT_S = 300  # generous: a 2x slower host still passes


class ChildLines:
    """A child's stdout lines, waited on with a deadline (never a sleep)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.lines = proc, queue.Queue()
        self.seen: list[str] = []
        self.result: dict = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def _next(self, deadline: float, waiting_for: str) -> str:
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {waiting_for} after {self.seen[-20:]}") from None
        self.seen.append(line)
        return line

    def wait_for(self, *wanted: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        missing = set(wanted) - set(self.seen)
        while missing:
            missing.discard(self._next(deadline, str(sorted(missing))))

    def line_with(self, prefix: str, timeout: float = WAIT_S) -> str:
        deadline = time.monotonic() + timeout
        while not (line := self._next(deadline, repr(prefix))).startswith(prefix):
            pass
        return line

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


@contextlib.contextmanager
def traffic(url: str, photo: Path) -> Iterator[ChildLines]:
    """tritonclient sending the photo on two threads to ``url`` until the block ends;
    its summary in ``.result``."""
    proc = subprocess.Popen(
        [sys.executable, str(CLIENT), "traffic", url, str(photo)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        lines = ChildLines(proc)
        lines.wait_for("started")
        yield lines
        lines.send("stop")
        lines.result = json.loads(lines.line_with("RESULT ").removeprefix("RESULT "))
        proc.wait(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
