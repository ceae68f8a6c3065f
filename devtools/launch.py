"""Run ``python -m server`` as a child process and wait until it serves.

For the tests, benchmarks and tools that need a real server: both listeners
(gRPC, HTTP, metrics) bind port 0 on 127.0.0.1, so the kernel picks free ports (no races between
runs), and the ``ready:`` line that ``server.app.serve`` prints names them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.settings.security import SecuritySettings
from server.settings.sources import section_env

READY = re.compile(r"^ready: gRPC \S+:(\d+), metrics port (-?\d+)", re.MULTILINE)
HTTP_PORT = re.compile(r"^ready: .*, HTTP port (-?\d+)", re.MULTILINE)


@dataclass
class Launched:
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    log: Path
    http_port: int = -1  # -1: HTTP off

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code (killed, -9, if it ignores the signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def output(self) -> str:
        return self.log.read_text()


def launch(
    repository: Path,
    *args: str,
    log: Path,
    python: Sequence[str] = (sys.executable,),
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    security: SecuritySettings | None = None,
) -> Launched:
    """Start the server on ``repository`` (``args`` come last and override ours).

    ``python`` is the interpreter command, e.g. ``(python, "-m", "cProfile", ...)``.
    ``security`` (model control, allowed hosts) reaches it as ``CNN_SERVING_SECURITY__*``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    extra_env = {**(section_env("security", security) if security else {}), **(env or {})}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*python, "-m", "server", "--model-repository", str(repository),
             "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
             "--metrics-host", "127.0.0.1", "--metrics-port", "0", *args],
            cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **extra_env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            found = READY.search(log.read_text())
            if found:
                http = HTTP_PORT.search(found.string)
                ports = int(found.group(1)), int(found.group(2))
                return Launched(proc, *ports, log, int(http.group(1)) if http else -1)
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{log.read_text()}")
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        raise
