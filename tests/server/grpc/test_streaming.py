"""ModelStreamInfer against a real server: one answer per request, batched, errors alone,
cancellation and shutdown (server/grpc/streaming.py). Reference: ONNX Runtime in this process."""

from __future__ import annotations

import queue
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from tests.kit.serving import (
    ServerProcess,
    digits,
    in_process,
    logits_of,
    start_server,
    tensor_request,
)
from tests.kit.stress import metric, wait_for


class Stream:
    """A ModelStreamInfer call fed from a queue, so a test decides when each request goes."""

    def __init__(self, srv: ServerProcess, timeout: float | None = 60) -> None:
        self._outbox: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
        self.call = srv.stub().ModelStreamInfer(self._requests(), timeout=timeout)

    def _requests(self) -> Iterator[pb.ModelInferRequest]:
        while (request := self._outbox.get()) is not None:
            yield request

    def send(self, request: pb.ModelInferRequest, id: str) -> None:
        request.id = id
        self._outbox.put(request)

    def close(self) -> None:
        self._outbox.put(None)

    def answers(self, n: int) -> dict[str, pb.ModelStreamInferResponse]:
        """The next ``n`` answers by request id; a second answer to one id fails the test."""
        got: dict[str, pb.ModelStreamInferResponse] = {}
        for _ in range(n):
            answer = next(self.call)
            key = answer.infer_response.id
            assert key not in got, f"request {key} answered twice"
            got[key] = answer
        return got


HEAVY = np.zeros((1, 3, 1024, 1024), np.float32)  # slow enough to still be queued


def _send_heavy(srv: ServerProcess, stream: Stream, n: int, must_hold: int) -> float:
    """Send ``n`` heavy requests, ids h0..; once all arrived, how many the server holds."""
    for i in range(n):
        stream.send(tensor_request("mobilenet_v2", HEAVY), f"h{i}")
    arrived = ("inference_in_flight", "inference_requests_total")
    assert wait_for(lambda: sum(metric(srv, name) for name in arrived) >= n)
    held = metric(srv, "inference_in_flight")
    assert held >= must_hold, f"only {held} of {n} requests still held: too few to test"
    return held


@pytest.fixture(scope="module")
def server(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(
        serve_repo,
        *("--model", "lenet5", "--max-queue-delay-us", "20000"),
        log_dir=tmp_path_factory.mktemp("stream-server"),
    )
    yield srv
    assert srv.terminate() == 0, srv.output()[-2000:]


def test_each_request_gets_its_own_logits_and_pipelined_ones_are_batched(
    server: ServerProcess, serve_repo: Path
) -> None:
    stats = pb.ModelStatisticsRequest(name="lenet5")
    before = server.stub().ModelStatistics(stats).model_stats[0]
    x = digits(24, seed=3)
    stream = Stream(server)
    for i in range(24):
        stream.send(tensor_request("lenet5", x[i : i + 1]), f"r{i}")
    got = stream.answers(24)
    stream.close()
    assert list(stream.call) == []  # the server ends the stream once the client closes it
    assert stream.call.code() == grpc.StatusCode.OK
    want = in_process(serve_repo, "lenet5", x)
    for i in range(24):
        answer = got[f"r{i}"]
        assert answer.error_message == ""
        assert answer.infer_response.model_name == "lenet5"
        np.testing.assert_allclose(logits_of(answer.infer_response)[0], want[i], atol=1e-4)
    after = server.stub().ModelStatistics(stats).model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 24 and executions < 24  # requests in flight together share batches


def test_a_bad_request_fails_alone_and_the_stream_goes_on(
    server: ServerProcess, serve_repo: Path
) -> None:
    x = digits(3, seed=4)
    wrong_type = tensor_request("lenet5", x[:1])
    wrong_type.inputs[0].datatype = "INT32"
    stream = Stream(server)
    stream.send(tensor_request("lenet5", x[:1]), "ok-0")
    stream.send(tensor_request("no_such_model", x[:1]), "unknown-model")
    stream.send(tensor_request("lenet5", np.zeros((1, 1, 28, 28), np.float32)), "wrong-shape")
    stream.send(wrong_type, "wrong-type")
    stream.send(tensor_request("lenet5", x[1:3]), "ok-1")
    got = stream.answers(5)
    stream.close()
    assert list(stream.call) == [] and stream.call.code() == grpc.StatusCode.OK
    expected = {
        "unknown-model": ["no_such_model"],
        "wrong-shape": ["[1, 1, 28, 28]", "[-1, 1, 32, 32]"],
        "wrong-type": ["INT32", "FP32"],
    }
    for key, fragments in expected.items():
        message = got[key].error_message
        assert all(f in message for f in fragments), (key, message)
        assert not got[key].infer_response.outputs  # an error carries only the request's id
    want = in_process(serve_repo, "lenet5", x)
    np.testing.assert_allclose(logits_of(got["ok-0"].infer_response), want[:1], atol=1e-4)
    np.testing.assert_allclose(logits_of(got["ok-1"].infer_response), want[1:3], atol=1e-4)


def test_a_cancelled_stream_drops_its_queued_requests(serve_repo: Path, tmp_path: Path) -> None:
    """Requests queued behind heavy work when the client cancels the stream are never run."""
    srv = start_server(
        serve_repo,
        *("--model", "mobilenet_v2", "--max-batch-size", "1", "--no-warmup"),
        *("--max-spatial-size", "1024"),  # HEAVY is 1024x1024, above the default 896
        log_dir=tmp_path,
    )
    try:
        stream = Stream(srv)
        held = _send_heavy(srv, stream, 12, must_hold=6)
        stream.call.cancel()
        stats = pb.ModelStatisticsRequest(name="mobilenet_v2")

        def computed() -> int:  # a batch running at cancel time still completes
            return srv.stub().ModelStatistics(stats).model_stats[0].execution_count

        def dropped() -> float:
            return metric(srv, "inference_dropped_total", reason="cancelled")

        assert wait_for(lambda: computed() + dropped() == 12), (computed(), dropped())
        # Those answered before the cancel, and the one running then; the rest dropped.
        assert computed() <= 12 - held + 1 and dropped() >= held - 1
        # ...and the server goes on serving.
        answer = srv.stub().ModelInfer(tensor_request("mobilenet_v2", HEAVY), timeout=60)
        assert logits_of(answer).shape == (1, 1000)
    finally:
        assert srv.terminate() == 0, srv.output()[-2000:]


def test_sigterm_answers_what_the_stream_sent_then_ends_it_unavailable(
    serve_repo: Path, tmp_path: Path
) -> None:
    srv = start_server(
        serve_repo,
        *("--model", "mobilenet_v2", "--max-batch-size", "1", "--no-warmup"),
        *("--max-spatial-size", "1024"),  # HEAVY is 1024x1024, above the default 896
        log_dir=tmp_path,
    )
    stream = Stream(srv)
    _send_heavy(srv, stream, 6, must_hold=3)
    srv.proc.send_signal(signal.SIGTERM)
    answers: list[pb.ModelStreamInferResponse] = []
    with pytest.raises(grpc.RpcError):  # the stream's status, after every answer
        for answer in stream.call:
            answers.append(answer)
    assert stream.call.code() == grpc.StatusCode.UNAVAILABLE, stream.call.details()
    assert "shutting down" in stream.call.details()
    assert sorted(a.infer_response.id for a in answers) == [f"h{i}" for i in range(6)]
    assert all(a.error_message == "" for a in answers)
    stream.close()
    assert srv.proc.wait(timeout=60) == 0, srv.output()[-2000:]


def test_the_stream_deadline_bounds_its_requests(server: ServerProcess) -> None:
    stream = Stream(server, timeout=2.0)
    stream.send(tensor_request("lenet5", digits(1)), "a")
    assert stream.answers(1)["a"].error_message == ""
    with pytest.raises(grpc.RpcError) as err:
        stream.answers(1)  # nothing more is sent: the call's deadline ends it
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    stream.close()


def test_a_stream_stopped_before_its_reader_runs_reads_nothing_and_ends() -> None:
    """Shutdown racing a stream's start: it must end UNAVAILABLE at once, not hang."""
    import asyncio

    from server.core.errors import Unavailable
    from server.grpc.streaming import InferStream

    read: list[int] = []

    async def requests():
        read.append(1)
        yield pb.ModelInferRequest(id="never")

    async def never_called(request, deadline):
        raise AssertionError("a stopped stream computed a request")

    async def run(stop_before_start: bool) -> list:
        stream = InferStream(never_called, None)
        if stop_before_start:
            stream.stop_reading()
        answers = stream.responses(requests())
        first = asyncio.ensure_future(answers.__anext__())
        if not stop_before_start:
            stream.stop_reading()  # the reader exists but has not taken a step yet
        with pytest.raises(Unavailable):
            await asyncio.wait_for(first, timeout=5)
        return read

    assert asyncio.run(run(True)) == []
    assert asyncio.run(run(False)) == []
