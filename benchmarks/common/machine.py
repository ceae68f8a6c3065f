"""What the numbers were measured on, and the process counters the benchmarks read.

Figures from a shared 2-core VM mean little without the machine beside them,
so every result file carries ``machine()``. The CPU and memory counters are
Linux ``/proc`` reads (cheap enough to take around every timed window); where
they are unreadable they return None and the reports say "-".
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path

LIBRARIES = (
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "numpy",
    "grpcio",
    "matplotlib",
)
MEMORY_METHOD = (
    "rise of the process's peak resident set size (Linux VmHWM, reset through "
    "/proc/self/clear_refs) while the backend loads and runs one warm-up pass at every "
    "batch size: weights, runtime arenas and the activations of the largest batch (freed "
    "heap is returned to the OS first with malloc_trim; still a lower bound where the "
    "allocator reuses pages it kept)"
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def gpus() -> tuple[str, ...]:
    """NVIDIA GPUs as ``name, memory, driver`` lines (empty without nvidia-smi or a GPU)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        out = subprocess.run(
            [exe, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(line.strip() for line in out.stdout.splitlines() if line.strip())


def gpu_reason() -> str | None:
    """None when an NVIDIA GPU is visible, else why not (for "skipped" rows)."""
    if gpus():
        return None
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU on this machine (nvidia-smi not found)"
    return "nvidia-smi lists no usable GPU"


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return versions


def _memory_gib() -> float | None:
    try:
        found = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    except OSError:
        return None
    return round(int(found.group(1)) / 2**20, 1) if found else None


def machine() -> dict:
    """CPU model, cores, memory, GPUs, OS and library versions, plus the time of the run."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    libs = library_versions()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "gpus": list(gpus()),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": libs,
        # flat copies, as the first result files had them
        **{k: libs.get(k) for k in ("torch", "onnxruntime", "numpy")},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def describe(meta: dict) -> str:
    """One line naming the machine, for reports."""
    gpu = "; ".join(meta.get("gpus") or []) or "no GPU"
    libs = meta.get("libraries") or {}
    versions = ", ".join(f"{k} {v}" for k, v in libs.items() if v)
    return (
        f"{meta.get('cpu')}, {meta.get('usable_cores')} usable of {meta.get('cores')} cores, "
        f"{meta.get('memory_gib')} GiB, {gpu}; {meta.get('os')}; Python {meta.get('python')}; "
        f"{versions}"
    )


# --- CPU counters ---------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    """user+system CPU seconds of another process (Linux), None where unreadable."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int, tid: int) -> float | None:
    """user+system CPU seconds of one thread of another process (Linux), else None.

    ``tid == pid`` is the main thread: the server's asyncio event loop, which does
    all per-request Python work, so its share is the request-handling cost.
    """
    return _stat_cpu_seconds(Path(f"/proc/{pid}/task/{tid}/stat"))


def _stat_cpu_seconds(path: Path) -> float | None:
    try:
        stat = path.read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float | None:
    """CPU seconds spent by every process on the machine since boot (Linux), else None.

    Its delta minus the client's and the server's CPU is what other processes
    took from the benchmark: the noise figure of a shared machine.
    """
    try:
        line = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --- memory ---------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def rss_mb() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so that what an earlier
    model or an int8 calibration freed is not silently reused by the next measurement."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakMemory:
    """Peak RSS rise (MB) over a block: ``with PeakMemory() as m: ...; m.mb``.

    Resets the kernel's high-water mark first, so the figure belongs to the
    block alone; None where /proc/self/clear_refs cannot be written.
    """

    def __init__(self) -> None:
        self.mb: float | None = None
        self._start: float | None = None

    def __enter__(self) -> PeakMemory:
        _release_freed_memory()
        self._start = rss_mb()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status_kib("VmHWM")
        if self._start is not None and peak is not None:
            self.mb = max(0.0, peak / 1024 - self._start)
