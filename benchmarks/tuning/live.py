"""The tuner against real things: ONNX Runtime in process, then one real server.

``batch_curve`` times the model file the server will serve at growing batch
sizes with the in-process benchmark's runner and timing windows. ``LiveProbe``
serves a scratch repository (the source model's version folders symlinked, one
config.pbtxt per candidate) from one ``python -m server`` started by
``devtools.launch``; each candidate is written there and loaded with
RepositoryModelLoad (the server's own reload path, no restart), and every load
level is the load generator's closed or open loop with its metrics deltas.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from benchmarks.common.stats import combine, summarize
from benchmarks.common.zoo import Subject, ensure_exported
from benchmarks.inprocess.backends import open_runner
from benchmarks.inprocess.timing import Budget, time_window
from benchmarks.loadtest.loadgen import run_closed_loop, run_open_loop
from benchmarks.tuning.candidates import CurvePoint, Pruning, curve_continues
from benchmarks.tuning.config import apply, write_candidate
from benchmarks.tuning.measure import Point
from devtools.launch import launch
from modelrepo.files import read_config
from modelrepo.serving import ServingConfig, read_serving
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

Log = Callable[[str], None]


def machine_cores() -> int:
    """CPUs this process may run on (what bounds instances x threads)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def served_subject(model: str, repository: Path, log: Log) -> Subject:
    """The version the server will serve (the newest), exporting the model if it is missing.

    A thin stand-in for ``zoo.ensure_exported`` that does not import the exporter
    (and torch) when the model is already there, and times what the server serves.
    """
    model_dir = Path(repository) / model
    versions = sorted(
        int(p.parent.name)
        for p in model_dir.glob("[0-9]*/model.onnx")
        if p.parent.name.isdigit() and (p.parent / "export.json").is_file()
    )
    if not versions:
        return ensure_exported(model, repository, log)
    report = json.loads((model_dir / str(versions[-1]) / "export.json").read_text())
    return Subject(name=model, version=versions[-1], dir=model_dir, report=report)


def batch_curve(
    subject: Subject,
    threads: list[int],
    sizes: list[int],
    target_ms: float,
    budget: Budget,
    pruning: Pruning | None = None,
    on_point: Callable[[CurvePoint], None] = lambda _: None,
) -> list[CurvePoint]:
    """p50 per (threads, batch) in process; a thread count stops at its knee or at the
    first batch too slow for the target (``curve_continues``)."""

    pruning = pruning or Pruning()
    points: list[CurvePoint] = []
    for t in threads:
        # spin=True: the server keeps ONNX Runtime's spinning threads, so the curve must too
        runner = open_runner(subject, "onnxruntime", "fp32", t, calibrate=lambda: None, spin=True)
        try:
            mine: list[CurvePoint] = []
            for b in sorted(sizes):
                if not curve_continues(mine, target_ms, pruning):
                    break
                x = np.random.default_rng(0).standard_normal(
                    (b, *subject.input_size), dtype=np.float32
                )
                for _ in range(budget.warmup):
                    runner.run(x)
                stats = combine(
                    [
                        summarize(time_window(runner.run, x, budget), b)
                        for _ in range(budget.repeats)
                    ]
                )
                mine.append(CurvePoint(t, b, stats["p50_ms"], stats["spread_pct"]))
                on_point(mine[-1])
            points += mine
        finally:
            runner.close()
    return points


@dataclass(frozen=True)
class Windows:
    """How long each load level runs."""

    seconds: float = 2.0  # closed-loop window; the open loop's shortest
    warmup: float = 0.5
    min_requests: int = 200  # an open-loop window lasts until this many are expected ...
    max_seconds: float = 6.0  # ... but no longer
    timeout: float = 5.0  # per-request deadline (s): an overloaded rate fails fast


def to_point(result: dict, elapsed: float) -> Point:
    """A load-generator result dict -> the tuner's Point."""
    latency = result.get("latency") or {}
    rejected = int(result["errors"].get("RESOURCE_EXHAUSTED", 0))
    server = result.get("server") or {}
    return Point(
        mode=result["mode"],
        level=float(result.get("concurrency") or result.get("rate")),
        throughput=float(result["throughput"]),
        p50_ms=latency.get("p50_ms"),
        p99_ms=latency.get("p99_ms"),
        requests=int(result["requests"]),
        rejected=rejected,
        errors=int(result["error_count"]) - rejected + int(result.get("client_overflow", 0)),
        batching_efficiency=server.get("batching_efficiency"),
        seconds=elapsed,
    )


class LiveProbe:
    """``Probe`` over a running server that serves the staged model folder."""

    def __init__(
        self,
        url: str,
        metrics_url: str,
        model: str,
        staged: Path,
        requests: list[bytes],
        default: ServingConfig,
        windows: Windows = Windows(),
        server_pid: int | None = None,
    ) -> None:
        self.url, self.metrics_url, self.model = url, metrics_url, model
        self.staged, self.requests, self.default = staged, requests, default
        self.windows, self.server_pid = windows, server_pid
        self.base = read_config(staged)
        self.loaded: ServingConfig | None = None

    def configure(self, candidate: ServingConfig) -> None:
        if candidate == self.loaded:
            return
        write_candidate(self.staged, self.base, None if candidate == self.default else candidate)
        with grpc.insecure_channel(self.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name=self.model), timeout=300
            )
            got = stub.ModelConfig(pb.ModelConfigRequest(name=self.model), timeout=30).config
        if read_serving(got) != candidate:
            raise RuntimeError(
                f"the server loaded {read_serving(got).label}, not {candidate.label}"
            )
        self.loaded = candidate

    def _common(self) -> dict:
        w = self.windows
        return dict(
            metrics_url=self.metrics_url,
            model=self.model,
            server_pid=self.server_pid,
            timeout=w.timeout,
        )

    def closed(self, concurrency: int) -> Point:
        began = time.perf_counter()
        w = self.windows
        result = run_closed_loop(
            self.url, self.requests, concurrency, w.seconds, w.warmup, **self._common()
        )
        return to_point(result, time.perf_counter() - began)

    def open(self, rate: float) -> Point:
        began = time.perf_counter()
        w = self.windows
        seconds = min(max(w.seconds, w.min_requests / rate), w.max_seconds)
        result = run_open_loop(self.url, self.requests, rate, seconds, w.warmup, **self._common())
        return to_point(result, time.perf_counter() - began)


def loaded_candidate(url: str, model: str) -> ServingConfig:
    """What a running server serves for ``model`` (from its ModelConfig)."""
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return read_serving(stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=30).config)


def apply_and_verify(
    repository: Path, model: str, candidate: ServingConfig, log: Path
) -> tuple[Path, ServingConfig]:
    """Write ``candidate`` into the repository's config.pbtxt (backup kept), then start a
    server on the repository: (the backup, what that server serves)."""

    backup = apply(Path(repository) / model, candidate)
    server = launch(Path(repository), "--model", model, log=log)
    try:
        served = loaded_candidate(server.url, model)
    finally:
        server.terminate()
    return backup, served
