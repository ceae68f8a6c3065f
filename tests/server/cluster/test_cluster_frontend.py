"""Each node's gRPC listener (``server/cluster/frontend.py``) without Ray: a real grpc.aio
server on localhost on its own thread, the single server's registration, a port that is
taken refused loudly."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.cluster.frontend import Listener, ListenError
from server.settings import Settings


class _Live(pb_grpc.GRPCInferenceServiceServicer):
    """Answers ServerLive on whichever loop runs it, and says which thread that was."""

    def __init__(self) -> None:
        self.threads: set[str] = set()

    async def ServerLive(self, request, context):  # noqa: N802 (the RPC's name)
        self.threads.add(threading.current_thread().name)
        return pb.ServerLiveResponse(live=True)


def _settings(port: int) -> Settings:
    tree = Settings()
    listeners = tree.listeners.model_copy(update={"host": "127.0.0.1", "grpc_port": port})
    return tree.model_copy(update={"listeners": listeners})


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_the_listener_serves_on_its_own_thread_and_stops_gracefully(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Also: grpc.aio on two loops (this client's and the listener's) makes the loop that
    loses each wake-up read EAGAIN; the listener's loop drops that instead of logging a
    traceback per call (a Serve replica's internal server is the other loop there)."""
    servicer = _Live()

    async def scenario() -> None:
        listener = Listener()
        await listener.start(servicer, _settings(0))
        assert listener.port > 0
        address = f"127.0.0.1:{listener.port}"
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(300):
                assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=30)).live
            probe = health_pb2_grpc.HealthStub(channel)
            answer = await probe.Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            raw = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await raw(b"\xff\xff\xff", timeout=30)  # not protobuf: the single server's answer
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid inference.ServerLiveRequest" in bad.value.details()
        await listener.stop(5.0)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
            assert gone.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())
    assert servicer.threads == {"kserve-grpc"}  # not the caller's loop
    logged = [r.getMessage() for r in caplog.records if r.threadName == "kserve-grpc"]
    assert not logged, logged[:3]


def test_a_taken_port_is_refused_naming_it(taken_port: int) -> None:
    async def scenario() -> None:
        listener = Listener()
        with pytest.raises(ListenError, match=rf"cannot listen for gRPC on 127.0.0.1:{taken_port}"):
            await listener.start(_Live(), _settings(taken_port))
        assert listener.port == 0

    asyncio.run(scenario())
