"""Where the deployment checks find their tools and files.

Prometheus/promtool and docker-compose come from Debian via
docker/install-check-tools.sh (run by ``make test``); hadolint from the dev extra.
A missing tool skips the test that needs it, naming how to get it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_DIR = DOCKER / "prometheus"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "cnn-serving.json"
LOCAL_BIN = ROOT / ".cache" / "tools" / "bin"
INSTALL_HINT = "`make check-tools` (docker/install-check-tools.sh: Debian packages, needs apt-get)"


def tool(name: str) -> str:
    """Path of ``name``: the project's unpacked tools, the venv, then PATH; else skip."""
    for folder in (LOCAL_BIN, Path(sys.executable).parent):
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found; install it with {INSTALL_HINT}")
    return found


def compose_command() -> list[str]:
    """Debian's docker-compose (1.29), else the Docker CLI's compose plugin; else skip."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    pytest.skip(f"neither docker-compose nor `docker compose` found; install with {INSTALL_HINT}")


def run(*cmd: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
