"""Overload for real: a burst far above capacity, deadlines and cancellations under load.

The latency bound (docs/guarantees.md): a request that is accepted finds at
most Q queued images ahead of it, i.e. ceil(Q / B) batches, plus the batch
running; so it waits at most (ceil(Q / B) + 2) x t_batch, t_batch being the
time the server takes per batch under that load (burst wall time / batches).
Measured here the accepted p99 is 1.1-1.8x that (the 48 client threads share the
2 cores with the server and slow its event loop); the test allows 3x, while an
unbounded queue would give ~30x for this burst.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.kit.serving import ServerProcess, start_server, tensor_request
from tests.kit.stress import metric, percentile, report, rss_mib, wait_for

B, Q = 4, 16  # max batch size, queue bound (images)
REQUEST_MIB = 3 * 224 * 224 * 4 / 2**20


def _stats(srv: ServerProcess) -> pb.ModelStatistics:
    stub = srv.stub()
    return stub.ModelStatistics(pb.ModelStatisticsRequest(name="mobilenet_v2")).model_stats[0]


def _burst(srv: ServerProcess, clients: int, requests: int) -> list[tuple[str, str, float]]:
    """``requests`` calls from ``clients`` threads at once: (code, message, seconds) each."""
    stub = srv.stub()
    req = tensor_request("mobilenet_v2", np.ones((1, 3, 224, 224), np.float32))

    def call(_: int) -> tuple[str, str, float]:
        start = time.perf_counter()
        try:
            stub.ModelInfer(req, timeout=120)
            return "OK", "", time.perf_counter() - start
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or "", time.perf_counter() - start

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(call, range(requests)))


@dataclass
class _Watched:
    """A burst, the queue depths sampled during it, and the server's counts of it."""

    results: list[tuple[str, str, float]]
    wall: float  # seconds
    depths: list[float]
    rows: int  # images computed
    batches: int


def _watched_burst(srv: ServerProcess, clients: int, requests: int) -> _Watched:
    depths: list[float] = []
    stop = threading.Event()

    def watch_queue() -> None:
        while not stop.is_set():
            depths.append(metric(srv, "inference_queue_depth", model="mobilenet_v2"))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_queue)
    before = _stats(srv)
    watcher.start()
    started = time.perf_counter()
    results = _burst(srv, clients, requests)
    wall = time.perf_counter() - started
    stop.set()
    watcher.join()
    after = _stats(srv)
    return _Watched(
        results,
        wall,
        depths,
        rows=after.inference_count - before.inference_count,
        batches=after.execution_count - before.execution_count,
    )


def test_burst_far_above_capacity(
    serve_repo: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    srv = start_server(
        serve_repo,
        *("--model", "mobilenet_v2", "--max-batch-size", str(B), "--max-queue-size", str(Q)),
        log_dir=tmp_path,
    )
    try:
        for _ in range(2):  # reach the working set: the buffers of 48 concurrent requests
            _burst(srv, 48, 192)
        rss_warm = rss_mib(srv.proc.pid)
        burst = _watched_burst(srv, 48, 768)
        results, max_depth = burst.results, max(burst.depths)
        rss_after = rss_mib(srv.proc.pid)

        ok = [t for code, _, t in results if code == "OK"]
        refused = [(m, t) for code, m, t in results if code == "RESOURCE_EXHAUSTED"]
        assert len(ok) + len(refused) == len(results), {c for c, _, _ in results}
        assert all("full" in m and f"limit {Q}" in m for m, _ in refused), refused[:3]
        assert len(refused) > len(ok) > 0  # far above capacity, and still serving
        assert max_depth <= Q  # the queue bound holds
        assert burst.rows == len(ok)  # every accepted request was computed, nothing else
        t_batch = burst.wall / burst.batches
        bound = (math.ceil(Q / B) + 2) * t_batch
        p99, refused_p50 = percentile(ok, 0.99), percentile([t for _, t in refused], 0.5)
        assert p99 <= 3 * bound, (p99, bound)
        assert refused_p50 < percentile(ok, 0.5) / 2  # refusals do not wait for the queue
        # No request is retained: were 1 in 10 kept, 768 x 0.6 MB would add 44 MiB a burst.
        # Judged over two bursts, so that the allocator's one-time growth to this load's
        # working set (up to 58 MiB seen in one burst) cannot pass for a leak.
        _burst(srv, 48, 768)
        rss_again = rss_mib(srv.proc.pid)
        allowed = 0.1 * 2 * len(results) * REQUEST_MIB
        assert rss_again - rss_warm < allowed, (rss_warm, rss_after, rss_again)
        report(
            request.config,
            f"\noverload: {len(results)} requests from 48 clients, {len(ok)} accepted, "
            f"{len(refused)} RESOURCE_EXHAUSTED (p50 {refused_p50 * 1e3:.0f} ms); accepted p99 "
            f"{p99 * 1e3:.0f} ms vs bound (ceil(Q/B)+2) x t_batch = {bound * 1e3:.0f} ms "
            f"(Q={Q}, B={B}, t_batch={t_batch * 1e3:.0f} ms); max queue depth seen "
            f"{max_depth:.0f}; RSS {rss_warm:.0f} -> {rss_after:.0f} -> {rss_again:.0f} MiB",
        )
    finally:
        assert srv.terminate() == 0, srv.output()[-2000:]


def test_expired_and_cancelled_requests_are_dropped_before_compute(
    serve_repo: Path, tmp_path: Path
) -> None:
    """Small requests queued behind heavy ones: 4 outlive their deadline, 4 are cancelled by
    their clients; metrics count all 8 as dropped and not one of them is computed."""
    srv = start_server(
        serve_repo,
        *("--model", "mobilenet_v2", "--max-batch-size", "1", "--no-warmup"),
        *("--max-spatial-size", "1024"),  # its heavy requests are above the default 896
        log_dir=tmp_path,
    )
    try:
        stub = srv.stub()
        heavy = tensor_request("mobilenet_v2", np.zeros((1, 3, 1024, 1024), np.float32))
        small = tensor_request("mobilenet_v2", np.zeros((1, 3, 32, 32), np.float32))
        # The deadline scales with this host's speed: 4 heavy requests' time lets the small
        # ones reach even a starved server, and the 12 or more heavy ones queued ahead of
        # them take 3x that, so the deadline passes while they wait.
        stub.ModelInfer(heavy, timeout=120)  # the first run also pays the model's set-up
        start = time.perf_counter()
        stub.ModelInfer(heavy, timeout=120)
        deadline_s = 4 * (time.perf_counter() - start)

        def arrived() -> float:  # requests the server has taken in: in handlers or answered
            return metric(srv, "inference_in_flight") + metric(srv, "inference_requests_total")

        # The small requests travel on a connection of their own: behind 300 MB of heavy
        # requests still in transit on the shared one, they could miss their deadline before
        # reaching the server (gRPC then drops them itself), and the cancelled ones could
        # find the queue already drained.
        own = grpc.insecure_channel(srv.url, options=[("grpc.use_local_subchannel_pool", 1)])
        small_stub = pb_grpc.GRPCInferenceServiceStub(own)
        with ThreadPoolExecutor(24) as pool:
            done = [pool.submit(stub.ModelInfer, heavy, timeout=120) for _ in range(24)]
            assert wait_for(lambda: arrived() >= 26), arrived()  # every heavy one is in
            queued = metric(srv, "inference_in_flight")
            assert queued >= 12, f"only {queued} heavy requests left: too few to outlast"
            late = [small_stub.ModelInfer.future(small, timeout=deadline_s) for _ in range(4)]
            cancelled = [small_stub.ModelInfer.future(small, timeout=120) for _ in range(4)]
            assert wait_for(lambda: arrived() >= 34), arrived()  # all 8 are queued
            for call in cancelled:
                call.cancel()
            for call in late:
                with pytest.raises(grpc.RpcError) as err:
                    call.result()
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            for future in done:
                future.result()
        own.close()
        stats = _stats(srv)
        assert stats.inference_count == stats.execution_count == 26  # only the heavy ones ran
        assert wait_for(lambda: metric(srv, "inference_dropped_total") == 8), metric(
            srv, "inference_dropped_total"
        )
        assert metric(srv, "inference_dropped_total", reason="deadline") == 4
    finally:
        assert srv.terminate() == 0, srv.output()[-2000:]
