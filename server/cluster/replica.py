"""One model's Ray Serve replica: the single server's servicer, data plane and batcher.

Each replica loads one model from the repository with ``ModelManager`` and
answers RPCs by calling the very ``InferenceServicer`` method the gRPC server
calls, so validation, batching, backends and the error → status mapping are
the same code. The servicer reports errors by aborting its context; the
replica's stand-in context records the status instead, and the ingress puts
it on the client's call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import ray
from ray import serve

from server.cluster import registry
from server.core.dataplane import DataPlane
from server.core.metrics import Metrics
from server.core.models import ModelManager
from server.core.shared_memory import SharedMemoryManager
from server.grpc.servicer import InferenceServicer
from server.settings import ModelSettings

log = logging.getLogger(__name__)

MiB = 1 << 20
# A ModelInfer response parameter naming the node that computed it (the tests and
# operators see where requests went); clients that do not look ignore it.
NODE_PARAMETER = "ray_node"
# The methods a replica runs for the ingress; everything else never reaches it.
MODEL_METHODS = frozenset(
    {
        "ServerReady",
        "ServerMetadata",
        "ModelReady",
        "ModelMetadata",
        "ModelConfig",
        "ModelInfer",
        "ModelStatistics",
        "RepositoryIndex",
    }
)


@dataclass(frozen=True)
class Outcome:
    """What one RPC came to: the response, or the status the servicer aborted with."""

    response: Any
    code: str  # grpc.StatusCode name; "OK" with a response
    details: str = ""


class _CallContext:
    """The ``grpc.aio.ServicerContext`` methods the servicer uses, for a call that
    arrived through Ray (the proxy applies the client's deadline)."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.details = ""

    def peer(self) -> str:
        """Each call its own owner: the replica cannot see the client behind Ray's proxy,
        so the single server's per-client queue share does not apply (Ray Serve bounds
        each replica's ongoing requests instead)."""
        return f"ray-call-{id(self)}"

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


@dataclass(frozen=True)
class ReplicaSettings:
    max_message_bytes: int = 64 * MiB
    metrics_port: int = 0  # 0: a free port per replica; -1: no /metrics endpoint
    intra_op_threads: int = 0


class ModelReplica:
    """Deployed once per model (``server.cluster.app``); Ray Serve makes the replicas."""

    async def __init__(
        self, repository: str, model: str, revision: str, settings: ReplicaSettings
    ) -> None:
        self.model, self.revision = model, revision
        self.node = ray.util.get_node_ip_address()
        self.metrics = Metrics.create()
        options = ModelSettings(
            repository=Path(repository),
            names=(model,),
            intra_op_threads=settings.intra_op_threads,
        )
        self.manager = ModelManager(options, self.metrics)
        # No shared memory: a client's region lives on its own host, not the replica's.
        self.plane = DataPlane(
            self.manager, settings.max_message_bytes, SharedMemoryManager(enabled=False)
        )
        self.servicer = InferenceServicer(self.plane, self.manager)
        await self.manager.load(model)  # raises: Ray reports the replica failed to start
        self._http = None
        self.metrics_url = ""
        if settings.metrics_port >= 0:
            self._http = self.metrics.serve(settings.metrics_port, "0.0.0.0")
            self.metrics_url = f"http://{self.node}:{self._http.server_port}/metrics"
        self.key = serve.get_replica_context().replica_id.unique_id
        registry.register(self.key, self.describe())
        log.info("replica of %s (revision %s) on %s", model, revision, self.node)

    async def call(self, method: str, request: Any) -> Outcome:
        if method not in MODEL_METHODS:
            raise ValueError(f"{method} is not a model RPC; allowed: {sorted(MODEL_METHODS)}")
        context = _CallContext()
        try:
            response = await getattr(self.servicer, method)(request, context)
        except grpc.aio.AbortError:
            return Outcome(None, context.code.name, context.details)
        if method == "ModelInfer":
            response.parameters[NODE_PARAMETER].string_param = self.node
        return Outcome(response, "OK")

    def describe(self) -> dict[str, str]:
        """Where this replica runs and where Prometheus scrapes it."""
        return {
            "model": self.model,
            "revision": self.revision,
            "node": self.node,
            "metrics": self.metrics_url,
        }

    def __del__(self) -> None:
        # Ray Serve calls this once the replica drained; the batcher threads die with
        # the process, the metrics port must not outlive a replica that stays alive.
        if getattr(self, "key", None) is not None:
            registry.unregister(self.key)
        if getattr(self, "_http", None) is not None:
            self._http.shutdown()
            self._http.server_close()
