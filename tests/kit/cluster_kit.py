"""The cluster tests' helpers: tritonclient traffic through a node in a child process
(cluster_client.py traffic; its stdout lines waited on with deadlines, never sleeps), the
cluster's status and replica ids, and ray.* parameters added to a config.pbtxt."""

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
from tests.kit.ray_netns import ROOT, NetnsCluster

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


def with_params(config: Path, params: dict[str, str]) -> None:
    """``params`` appended to a config.pbtxt as string parameters."""
    text = "".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items()
    )
    config.write_text(config.read_text() + text)


def status(net: NetnsCluster, *extra: str) -> dict:
    """``python -m server.cluster status --json`` run on the head."""
    address = f"--address={net.head_address()}"
    cmd = (sys.executable, "-m", "server.cluster", "status", address, "--json", *extra)
    return json.loads(net.run_in("head", *cmd))


def replica_ids(status: dict, app: str, deployment: str) -> set[str]:
    """The running replicas of one deployment, by id."""
    replicas = status["applications"][app]["deployments"][deployment]["replicas"]
    return {r["replica_id"] for r in replicas if r["state"] == "RUNNING"}
