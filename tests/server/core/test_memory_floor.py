"""Memory goes back after large requests (issue 15).

Was: after large inputs the RSS floor stayed up (210 -> 410 MB after large
images; here 222 -> 1482 MiB after 36 batches of 8x3x448x448). ONNX Runtime's
arena now gives back what an unusually large batch took, and the server
trims glibc's arenas while RSS is over its level after loading. Real server,
RSS read from /proc; the wait is for the RSS itself, not for a time.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.kit.serving import start_server, tensor_request
from tests.kit.stress import peak_rss_mib, report, rss_mib, wait_for

LARGE = (8, 3, 448, 448)  # 19 MB of FP32: above a usual full batch, within every limit


def _burst(stub, threads: int = 4, each: int = 3) -> list[str]:
    req = tensor_request("mobilenet_v2", np.random.default_rng(0).random(LARGE, np.float32))
    codes: list[str] = []

    def work() -> None:
        for _ in range(each):
            try:
                stub.ModelInfer(req, timeout=300)
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(f"{exc.code().name}: {exc.details()}")

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return codes


def test_the_rss_floor_comes_back_after_large_batches(
    serve_repo: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    srv = start_server(serve_repo, "--model", "mobilenet_v2", log_dir=tmp_path)
    try:
        stub = srv.stub()
        stub.ModelInfer(tensor_request("mobilenet_v2", np.zeros((1, 3, 224, 224), np.float32)))
        base = rss_mib(srv.proc.pid)
        codes = _burst(stub)
        assert codes == ["OK"] * len(codes), codes[:3]
        peak, after = peak_rss_mib(srv.proc.pid), rss_mib(srv.proc.pid)
        assert peak - base > 300  # the burst did take memory
        back = wait_for(lambda: rss_mib(srv.proc.pid) < base + 100, timeout=120, step=0.5)
        floor = rss_mib(srv.proc.pid)
        report(
            request.config,
            f"\nmemory floor: RSS {base:.0f} MiB loaded, peak {peak:.0f}, {after:.0f} right "
            f"after {len(codes)} batches of {LARGE}, {floor:.0f} once idle",
        )
        assert back, f"RSS stayed at {floor:.0f} MiB, {floor - base:.0f} over {base:.0f}"
    finally:
        assert srv.terminate() == 0, srv.output()[-3000:]
