"""py-spy with native frames on a loaded server: where its CPU per request goes.

Sampling stops the process for every sample, so a profiled window is never a measured
one: the benchmark runs it after its rounds. Two recordings back to back while the load
runs: collapsed stacks (``--format raw``, which flamegraph.pl, inferno and speedscope
read), summarised here into a top-like table of self and total shares per function, and
an SVG flame graph. py-spy leaves idle threads out, but with native frames it misses
threads blocked in the kernel (epoll_wait, poll, lock and condition waits), so the summary
moves stacks that end in such a wait to a "waiting" share of their own and writes the
busy stacks alone to ``*.busy.txt``; the SVG still shows them all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.common.md_table import table

TOP = 30
# Leaf calls that block a thread: a stack ending in one is a waiting thread, not work.
WAITS = frozenset(
    ("epoll_wait", "epoll_pwait", "poll", "ppoll", "select", "pselect", "nanosleep",
     "clock_nanosleep", "pthread_cond_wait", "pthread_cond_timedwait", "sem_wait",
     "sem_timedwait", "sem_clockwait", "PyThread_acquire_lock_timed", "accept", "accept4")
)  # fmt: skip
_UNRESOLVED = re.compile(r"^0x[0-9a-f]+ \(")  # a native frame without a symbol


def waiting(frames: list[str]) -> bool:
    """Whether a stack ends in a blocking call (unresolved native frames above it skipped)."""
    for frame in reversed(frames):
        if not _UNRESOLVED.match(frame):
            return frame.split(" (", 1)[0] in WAITS
    return False


def py_spy() -> str:
    """The py-spy executable beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy==0.4.3)")
    return found


_RUNNING: set[subprocess.Popen[str]] = set()  # py-spy processes, stopped by stop_all()


def record(pid: int, seconds: float, output: Path, fmt: str, rate: int = 200) -> str | None:
    """Sample ``pid`` for ``seconds`` into ``output``; None, or why it failed."""
    cmd = [py_spy(), "record", "--pid", str(pid), "--native", "--nolineno",
           "--rate", str(rate), "--duration", str(max(1, round(seconds))),
           "--format", fmt, "--output", str(output)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _RUNNING.add(proc)
    try:
        said, _ = proc.communicate(timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        return f"py-spy did not finish within {seconds + 120:.0f}s"
    finally:
        _stop(proc)
    if proc.returncode != 0 or not output.is_file():
        return f"py-spy exited with {proc.returncode}: {said[-500:]}"
    return None


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    _RUNNING.discard(proc)


def stop_all() -> None:
    """Kill (by pid) every py-spy still running: the benchmark is ending."""
    for proc in list(_RUNNING):
        _stop(proc)


def split_waiting(text: str) -> tuple[list[tuple[list[str], int]], int]:
    """Collapsed stacks (``frame;frame;...;leaf count`` lines) -> (busy stacks, waiting samples).

    Native frames without a symbol become ``(unnamed) (library)``, so they add up."""
    busy, waits = [], 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if waiting(frames):
            waits += int(count)
        else:  # a library's unnamed native frames summed as one
            busy.append(([_UNRESOLVED.sub("(unnamed) (", f) for f in frames], int(count)))
    return busy, waits


def collapsed_top(
    busy: list[tuple[list[str], int]], top: int = TOP
) -> tuple[int, list[tuple[str, int, int]]]:
    """(samples, [(frame, self samples, total samples)]) of busy stacks, by self samples;
    a frame counts once per stack for its total."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for frames, n in busy:
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    rows = [(frame, n, total[frame]) for frame, n in own.most_common(top)]
    return samples, rows


def top_markdown(title: str, busy: list[tuple[list[str], int]], waits: int) -> list[str]:
    """A Markdown section: the busiest frames by self samples, with their total share."""
    samples, rows = collapsed_top(busy)
    head = (
        f"### {title}\n\n{samples} busy samples (shares below are of these), {waits} more "
        "in blocking calls left out; self: the frame on top of the stack, total: anywhere in it"
    )
    if not samples:
        return [head, "", "no busy samples recorded", ""]
    body = [
        [f"`{frame.replace('|', '/')}`", f"{100 * n / samples:.1f}%", f"{100 * t / samples:.1f}%"]
        for frame, n, t in rows
    ]
    return [head, "", *table(["frame", "self", "total"], body), ""]


def profile_server(pid: int, seconds: float, prefix: Path) -> dict:
    """Both recordings of ``pid`` (``seconds`` each), the top table written beside them.

    Returns the files written (``raw``, ``busy``, ``top``, ``svg``) and any ``error``.
    """
    raw, svg = prefix.with_suffix(".collapsed.txt"), prefix.with_suffix(".svg")
    out: dict = {}
    error = record(pid, seconds, raw, "raw")
    if error is None:
        out["raw"] = str(raw)
        busy, waits = split_waiting(raw.read_text())
        kept = prefix.with_suffix(".busy.txt")
        kept.write_text("".join(f"{';'.join(f)} {n}\n" for f, n in busy))
        top = prefix.with_suffix(".top.md")
        top.write_text("\n".join(top_markdown(prefix.name, busy, waits)) + "\n")
        out.update(busy=str(kept), top=str(top))
        error = record(pid, seconds, svg, "flamegraph")
        if error is None:
            out["svg"] = str(svg)
    if error is not None:
        out["error"] = error
    return out
