"""The report section for benchmarks/serve_vs_inprocess.py's results."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common.machine import describe
from benchmarks.common.md_table import fmt as _f
from benchmarks.common.md_table import table as _table


def serve_vs_inprocess_section(path: Path | None) -> list[str]:
    """The server against in-process ONNX Runtime (benchmarks/serve_vs_inprocess.py)."""
    if path is None or not path.is_file():
        return []
    data = json.loads(path.read_text())
    lines = [
        "## Server vs in-process ONNX Runtime",
        "",
        f"From `{path.name}` ({data.get('model')}, {data.get('threads')} threads, measured "
        f"{(data.get('machine') or {}).get('date', '')} on {describe(data.get('machine') or {})})"
        ": the server's throughput at the highest "
        "concurrency against the best in-process batch of one session, in paired rounds "
        "(benchmarks/serve_vs_inprocess.py); target ≥ 0.90×. Each server is also compared "
        "with a second layout in process: its own instances × threads where it has several, "
        "else one single-thread session per thread.",
        "",
    ]
    body = []
    for s in data.get("summary") or []:
        if not s.get("rounds"):
            continue
        lo, hi = s.get("throughput_ratio_range") or (None, None)
        pairs = s.get("throughput_pairs") or {}
        body.append(
            [
                *_labels(s),
                f"{_f(s.get('best_inprocess_throughput'), '.1f')} "
                f"(b={s.get('best_inprocess_batch')})",
                f"{_f(s.get('server_throughput'), '.1f')} ({s.get('concurrency')} clients)",
                f"{_f(s.get('throughput_ratio'), '.3f')}× ({_f(lo, '.2f')}–{_f(hi, '.2f')}, "
                f"{pairs.get('stable', 0)} stable pairs)",
                "met" if s.get("throughput_target_met") else "MISSED",
                _f(s.get("batching_efficiency"), ".2f"),
                _second_layout(s.get("layout_reference") or s.get("own_layout")),
                _f(s.get("p50_overhead_ms"), "+.2f", " ms"),
            ]
        )
    header = [
        "server args",
        "tensors",
        "in-process img/s",
        "server img/s",
        "ratio",
        "≥ 0.90×",
        "images/batch",
        "vs a second layout in process",
        "single-stream p50 overhead",
    ]
    return lines + _table(header, body) + [""] + _cpu_section(data)


def _labels(summary: dict) -> list[str]:
    """A variant's first two cells: its server flags and how its tensors travelled."""
    inputs = summary.get("inputs", "raw")
    args = summary.get("server_args")
    return [f"`{args}`" if args else "(defaults)", _INPUTS.get(inputs, inputs)]


def _second_layout(ref: dict | None) -> str:
    """The ratio against the second layout in process: the server's own instances x
    threads, else one single-thread session per thread ("-": results from before either
    existed). Results saved before the key's rename call it "own_layout"."""
    if not ref or ref.get("ratio") is None:
        return "-"
    whose = ", the server's" if ref.get("server_layout", True) else ""
    return (
        f"{ref['ratio']:.3f}× ({ref.get('name')}{whose} at b={ref.get('best_batch')}, "
        f"{_f(ref.get('throughput'), '.1f')} img/s)"
    )


def _cpu_section(data: dict) -> list[str]:
    """Where the machine's CPU went at the highest concurrency, per image."""
    body = []
    for s in data.get("summary") or []:
        cpu = s.get("cpu_per_image") or {}
        if cpu.get("server_loop_ms") is None:
            continue  # results from before this breakdown existed, or without /proc
        over = cpu.get("compute_over_inprocess")
        second = cpu.get("compute_over_layout_reference", cpu.get("compute_over_own_layout"))
        body.append(
            [
                *_labels(s),
                _f(cpu.get("inprocess_ms")),
                _f(cpu.get("server_ms")),
                _f(cpu.get("server_loop_ms")),
                f"{_f(cpu.get('server_other_threads_ms'))}"
                f" ({_f(None if over is None else 100 * over, '+.0f', '%')}"
                + ("" if second is None else f"; {100 * second:+.0f}% vs the second layout")
                + ")",
                _f(cpu.get("client_ms")),
                _f(cpu.get("idle_pct"), ".0f", "%"),
            ]
        )
    if not body:
        return []
    header = [
        "server args",
        "tensors",
        "in-process ONNX Runtime",
        "server, all threads",
        "event loop (request handling)",
        "compute + gRPC core threads (vs in-process)",
        "client",
        "machine idle",
    ]
    return [
        "Where the CPU goes at the highest concurrency, in CPU milliseconds per image (medians "
        "over the rounds). The event-loop thread does every request's Python work; the other "
        "server threads are ONNX Runtime's and gRPC's core; the client shares the machine.",
        "",
        *_table(header, body),
        "",
    ]


_INPUTS = {  # serve_vs_inprocess.py --inputs: how the tensor travels, and over which RPC
    "raw": "in the request",
    "shm": "shared memory",
    "stream-raw": "in the request, streamed",
    "stream-shm": "shared memory, streamed",
}
