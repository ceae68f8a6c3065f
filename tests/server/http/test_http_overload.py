"""HTTP under overload and shutdown: 429 when the model's queue is full, 503 once
the server is shutting down, never another 5xx, and a clean exit."""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tests.kit.http_kit import binary_request, call, fp32
from tests.kit.serving import start_server

MODEL = "mobilenet_v2"


def test_full_queue_is_429_and_shutdown_is_503(serve_repo: Path, tmp_path: Path) -> None:
    srv = start_server(
        serve_repo,
        *("--model", MODEL, "--max-batch-size", "1", "--max-queue-size", "1"),
        *("--instance-count", "1", "--grace-seconds", "60"),
        log_dir=tmp_path,
    )
    x = np.ones((1, 3, 224, 224), np.float32)
    body, headers = binary_request([("input", "FP32", list(x.shape), fp32(x))])
    url = f"{srv.http_url}/v2/models/{MODEL}/infer"
    try:
        with ThreadPoolExecutor(24) as pool:
            replies = list(pool.map(lambda _: call(url, body, headers), range(96)))
        statuses = Counter(r.status for r in replies)
        assert set(statuses) <= {200, 429} and statuses[429] and statuses[200], statuses
        full = next(json.loads(r.body)["error"] for r in replies if r.status == 429)
        assert "queue" in full, full

        seen: Counter[int | str] = Counter()
        lock, stop = threading.Lock(), threading.Event()

        def keep_sending() -> None:
            while not stop.is_set():
                try:
                    status: int | str = call(url, body, headers, timeout=30).status
                except OSError:  # the listener closed: the server is going away
                    status = "closed"
                with lock:
                    seen[status] += 1
                if status == "closed":
                    return

        threads = [threading.Thread(target=keep_sending) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            assert srv.terminate(timeout=120) == 0, srv.output()[-3000:]
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert set(seen) <= {200, 429, 503, "closed"}, seen
    finally:
        srv.terminate()
    assert "Traceback" not in srv.output(), srv.output()[-3000:]
