"""This node's Ray processes, found by a mark ``up`` puts in their environment.

``ray stop`` kills every process on the machine whose name looks like Ray's
(another cluster's nodes, a notebook's ``ray.init()``), and Ray's session folder
does not tell nodes apart either: nodes joined to one head share its session
path. So ``up`` starts ``ray start`` with ``CNN_SERVING_RAY_NODE=<node IP>`` in
its environment; Ray's daemons inherit it, and its workers are the raylet's
children. ``stop`` signals exactly those processes.
"""

from __future__ import annotations

import os

import psutil

MARK = "CNN_SERVING_RAY_NODE"


def mark(node_ip: str | None) -> dict[str, str]:
    """The environment entry that names this node's processes."""
    return {MARK: node_ip or "default"}


def processes(node_ip: str | None) -> list[psutil.Process]:
    """Processes carrying this node's mark, and their children (Ray's workers)."""
    key, value = next(iter(mark(node_ip).items()))
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.environ().get(key) != value:
                continue
            found[proc.pid] = proc
            found.update((c.pid, c) for c in proc.children(recursive=True))
        except psutil.Error:  # gone, or not ours to read
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def is_head(procs: list[psutil.Process]) -> bool:
    """Whether the node runs the GCS (the head)."""
    for proc in procs:
        try:
            if proc.name().startswith("gcs_server"):
                return True
        except psutil.Error:
            continue
    return False


def stop(procs: list[psutil.Process], grace_s: float) -> int:
    """SIGTERM the processes, SIGKILL those left after ``grace_s``; how many."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)
