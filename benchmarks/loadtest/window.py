"""A load level's timed window: what is recorded inside it, the server probes at
its ends, and the one result dict both load loops return.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from benchmarks.common.machine import machine_cpu_seconds, process_cpu_seconds, thread_cpu_seconds
from benchmarks.common.stats import summarize
from benchmarks.loadtest.server_metrics import metrics_delta, parse_metrics, scrape, server_figures


@dataclass
class Window:
    """The timed window (perf_counter seconds) and what happened inside it."""

    start: float = float("inf")
    end: float = float("inf")
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    last_done: float = 0.0

    def record(self, sent: float, done: float, code: str | None, need_done_in: bool) -> None:
        if sent < self.start or (need_done_in and done > self.end):
            return
        if code is None:
            self.latencies.append(done - sent)
            self.last_done = max(self.last_done, done)
        else:
            self.errors[code] += 1


class Probe:
    """Scrapes server metrics and CPU counters at the window's ends (off the event loop)."""

    def __init__(self, metrics_url: str | None, model: str | None, server_pid: int | None):
        self.metrics_url, self.model, self.server_pid = metrics_url, model, server_pid
        self.error: str | None = None

    def _take(self) -> tuple:
        metrics = None
        if self.metrics_url and self.model:
            try:
                metrics = parse_metrics(scrape(self.metrics_url), self.model)
            except Exception as exc:  # a level's figures must not die with the endpoint
                self.error = f"{type(exc).__name__}: {exc}"
        pid = self.server_pid
        cpu = process_cpu_seconds(pid) if pid else None
        loop = thread_cpu_seconds(pid, pid) if pid else None
        return time.perf_counter(), metrics, cpu, loop, machine_cpu_seconds()

    async def take(self) -> tuple:
        """(perf_counter, metrics, server CPU s, its main thread's CPU s, machine CPU s);
        each but the first None where unavailable."""
        return await asyncio.to_thread(self._take)


async def closed_window(
    tasks: list[asyncio.Task], window: Window, probe: Probe, seconds: float, warmup: float
) -> tuple[float, tuple, tuple]:
    """A closed loop's timed window: ``warmup`` s uncounted, then ``seconds`` s between
    two probes; waits for ``tasks`` to end their last requests. (client CPU s, probes)."""
    await asyncio.sleep(warmup)
    before = await probe.take()
    cpu0 = time.process_time()
    window.start = time.perf_counter()
    window.end = window.start + seconds
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    cpu1 = time.process_time()
    after = await probe.take()
    await asyncio.gather(*tasks)
    return cpu1 - cpu0, before, after


def summary(
    mode: str,
    window: Window,
    window_s: float,
    batch_size: int,
    client_cpu_s: float,
    probe: Probe,
    before: tuple,
    after: tuple,
) -> dict:
    requests = len(window.latencies)
    result: dict = {
        "mode": mode,
        "seconds": window_s,
        "batch_size": batch_size,
        "requests": requests,
        "errors": dict(window.errors),
        "error_count": sum(window.errors.values()),
        "throughput": requests * batch_size / window_s,
        "requests_per_s": requests / window_s,
        "client_cpu_pct": 100 * client_cpu_s / window_s,
        "latency": asdict(summarize(window.latencies, batch_size)) if requests else None,
    }
    (t0, m0, c0, loop0, all0), (t1, m1, c1, loop1, all1) = before, after
    result["server"] = (
        server_figures(metrics_delta(m0, m1), t1 - t0) if m0 is not None and m1 else None
    )
    result["server_cpu_pct"] = 100 * (c1 - c0) / (t1 - t0) if c0 is not None and c1 else None
    result["server_loop_cpu_pct"] = (
        100 * (loop1 - loop0) / (t1 - t0) if loop0 is not None and loop1 is not None else None
    )
    if all0 is not None and all1 is not None:
        result["machine_cpu_pct"] = 100 * (all1 - all0) / (t1 - t0)
        if result["server_cpu_pct"] is not None:
            result["other_cpu_pct"] = (
                result["machine_cpu_pct"] - result["server_cpu_pct"] - result["client_cpu_pct"]
            )
    if probe.error:
        result["metrics_error"] = probe.error
    return result
