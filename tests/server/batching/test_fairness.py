"""One client cannot take a model's whole queue (issue 15).

Was: a stream that sent requests and never read its answers filled
mobilenet_v2's queue, and 10 of 28 requests from another client got
RESOURCE_EXHAUSTED. Now each client (a connection, or a stream) holds at most
its share of the queue, and a stream's unread answers are bounded, so the
other client is served in full. Real server, real streams, no timing: the
flood is known to be on once the flooder has sent several queues' worth.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2_grpc as pb_grpc
from tests.kit.serving import ServerProcess, start_server, tensor_request
from tests.kit.stress import rss_mib, wait_for

Q = 8  # queue bound; each client's share: 4 rows
X = np.zeros((1, 3, 224, 224), np.float32)


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(
        serve_repo,
        *("--model", "mobilenet_v2", "--max-batch-size", "1", "--max-queue-size", str(Q)),
        log_dir=tmp_path_factory.mktemp("fair"),
    )
    yield srv
    assert srv.terminate() == 0, srv.output()[-3000:]


def own_connection(srv: ServerProcess) -> pb_grpc.GRPCInferenceServiceStub:
    """A stub on a TCP connection of its own (grpc shares them between equal channels)."""
    channel = grpc.insecure_channel(srv.url, options=[("grpc.use_local_subchannel_pool", 1)])
    return pb_grpc.GRPCInferenceServiceStub(channel)


def other_client(srv: ServerProcess, requests: int = 28, threads: int = 2) -> list[str]:
    stub = own_connection(srv)

    def call(_: int) -> str:
        try:
            stub.ModelInfer(tensor_request("mobilenet_v2", X), timeout=120)
            return "OK"
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, range(requests)))


def test_a_stream_that_never_reads_leaves_room_for_others(server: ServerProcess) -> None:
    stop = threading.Event()
    sent = [0]

    def flood():
        while not stop.is_set():
            sent[0] += 1
            yield tensor_request("mobilenet_v2", X)

    call = own_connection(server).ModelStreamInfer(flood())  # answers never read
    try:
        # Far more sent than the queue holds: before, the server read them all and the
        # queue stayed full; now it stops reading the stream (and flow control stops it).
        assert wait_for(lambda: sent[0] >= 4 * Q, timeout=120)
        rss_flooded = rss_mib(server.proc.pid)
        results = other_client(server)
        assert results == ["OK"] * 28, [r for r in results if r != "OK"][:3]
        # The stream's unread answers and requests are bounded: memory does not climb.
        assert rss_mib(server.proc.pid) - rss_flooded < 200
    finally:
        stop.set()
        call.cancel()


def test_one_connection_flooding_with_many_threads_leaves_room_for_others(
    server: ServerProcess,
) -> None:
    stop = threading.Event()
    flooder = own_connection(server)
    refused: list[str] = []

    def flood() -> None:
        while not stop.is_set():
            try:
                flooder.ModelInfer(tensor_request("mobilenet_v2", X), timeout=120)
            except grpc.RpcError as exc:
                refused.append(exc.details() or "")

    threads = [threading.Thread(target=flood) for _ in range(12)]
    for thread in threads:
        thread.start()
    try:
        assert wait_for(lambda: len(refused) > 0, timeout=120)  # it is over its share
        results = other_client(server)
        assert results == ["OK"] * 28, [r for r in results if r != "OK"][:3]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert "full for this client" in refused[0] and "--max-queue-share" in refused[0], refused[0]
