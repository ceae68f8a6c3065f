"""A 10-minute soak at moderate load (marker ``soak``: ``make test-all`` runs it,
``make test`` does not): zero errors, and RSS after warm-up grows by less than 5%.

SOAK_SECONDS shortens or lengthens it (default 600); the first 10% is warm-up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.kit.serving import digits, start_server, tensor_request
from tests.kit.stress import ValidStream, encoded, image_request, report, rss_mib

pytestmark = pytest.mark.soak
SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))


def test_soak_at_moderate_load(
    serve_repo: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    srv = start_server(serve_repo, log_dir=tmp_path)
    try:
        x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
        mix = [
            tensor_request("mobilenet_v2", x),
            image_request([encoded("JPEG", (320, 240)), encoded("PNG", (200, 300))]),
            tensor_request("lenet5", digits(4)),
        ]
        samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB)
        started = time.monotonic()
        with ValidStream(srv, mix, threads=3, pause=0.02) as stream:
            while (elapsed := time.monotonic() - started) < SECONDS:
                samples.append((elapsed, rss_mib(srv.proc.pid)))
                time.sleep(min(5.0, SECONDS / 60))
        warm = max(rss for t, rss in samples if t <= SECONDS * 0.1)
        last = max(rss for t, rss in samples if t >= SECONDS * 0.9)
        total = sum(stream.outcomes.values())
        report(
            request.config,
            f"\nsoak: {total} requests in {SECONDS:.0f} s ({total / SECONDS:.0f}/s), "
            f"outcomes {dict(stream.outcomes)}; RSS after warm-up {warm:.0f} MiB, "
            f"at the end {last:.0f} MiB ({(last / warm - 1) * 100:+.1f}%)",
        )
        assert set(stream.outcomes) == {"OK"}, (stream.outcomes, stream.messages[:5])
        assert last < warm * 1.05, samples
    finally:
        assert srv.terminate() == 0, srv.output()[-2000:]
