"""`down --stop-node`'s process handling on real processes (no Ray needed): only the
processes carrying this node's mark and their children are found, SIGTERM first and
SIGKILL after `--stop-grace-s` for one that ignores it; the Makefile's cluster targets
run the commands docs/cluster.md names."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from server.cluster.processes import mark, processes, stop

ROOT = Path(__file__).resolve().parents[3]
# A parent that ignores SIGTERM, with one child; each says "ready" once its handler is set.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
nap = "import time; print('ready', flush=True); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", nap], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print("ready", child.pid, flush=True)
time.sleep(600)
"""


@pytest.fixture
def started() -> Iterator[list[int]]:
    """The pids this test started (parents and their children), killed by pid at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:  # also when the test failed
        try:
            psutil.Process(pid).kill()
        except psutil.Error:  # already gone
            pass


def _spawn(pids: list[int], env: dict[str, str]) -> tuple[int, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    pids.append(proc.pid)
    assert proc.stdout is not None
    word, child = proc.stdout.readline().split()
    assert word == "ready"
    pids.append(int(child))
    return proc.pid, int(child)


def test_stop_finds_only_this_nodes_processes_and_kills_after_the_grace(
    started: list[int],
) -> None:
    ours, our_child = _spawn(started, mark("10.9.9.1"))
    other, other_child = _spawn(started, mark("10.9.9.2"))
    found = processes("10.9.9.1")
    assert {p.pid for p in found} == {ours, our_child}
    began = time.monotonic()
    assert stop(found, grace_s=0.5) == 2
    waited = time.monotonic() - began
    codes = {p.pid: getattr(p, "returncode", None) for p in found}  # psutil reaped ours
    assert codes[ours] == -9  # it ignored SIGTERM: killed after the grace
    assert waited >= 0.5  # SIGKILL came only after the grace had passed
    assert not psutil.pid_exists(our_child) or psutil.Process(our_child).status() == "zombie"
    for pid in (other, other_child):  # another node's processes on the same machine live on
        assert psutil.Process(pid).status() != "zombie"


@pytest.mark.parametrize(
    ("target", "address", "expected"),
    [
        ("cluster-up", "", "-m server.cluster up --model-repository REPO"),
        ("cluster-up", "10.0.0.1:6379", "up --model-repository REPO --address 10.0.0.1:6379"),
        ("cluster-down", "", "-m server.cluster down --stop-node"),
        ("cluster-down", "10.0.0.1:6379", "down --address 10.0.0.1:6379 --stop-node"),
    ],
)
def test_make_cluster_targets_run_the_documented_commands(
    target: str, address: str, expected: str
) -> None:
    """`make cluster-up` / `cluster-down` (ADDRESS joins instead) print, with -n, what they run;
    -o keeps make from rebuilding the venv stamp."""
    out = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", target, "REPO=REPO", f"ADDRESS={address}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert expected in " ".join(out.split()), out
