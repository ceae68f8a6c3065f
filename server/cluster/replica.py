"""One model's Ray Serve replica: the single server's data plane, batcher and backends.

Each replica loads one model from the repository with ``ModelManager`` and
answers the ingress by calling the ``DataPlane`` methods the gRPC and HTTP
frontends call, so validation, batching, backends and classification are the
same code; ModelInfer's protobuf (from the node's ingress) is translated as the gRPC
frontend translates it (``server/core/converters.py``). An error comes back as the
core's own ``InferenceError`` (a value, not a raised exception: Ray would log a
traceback per bad request), and the
ingress maps it to a status through ``server/core/errors.py`` like every
frontend; anything else is a bug, logged here and answered INTERNAL.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import ray
from ray import serve

from protos import grpc_service_pb2 as pb
from server.cluster import registry
from server.cluster.settings import replica_tree
from server.core import converters
from server.core.errors import InferenceError, clip
from server.core.wiring import build_core

log = logging.getLogger(__name__)

# A ModelInfer response parameter naming the node that computed it (the tests and
# operators see where requests went); clients that do not look ignore it.
NODE_PARAMETER = "ray_node"


async def _infer(replica: ModelReplica, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    # Each call its own owner: the replica cannot see the client behind the ingress, so
    # the single server's per-client queue share does not apply (Ray Serve bounds each
    # replica's ongoing requests instead). The ingress applies the client's deadline.
    plane = replica.plane
    message = converters.request_from_pb(request, plane.request_limits)
    answer = await plane.infer(message, None, owner=object())
    answer.parameters[NODE_PARAMETER] = replica.node
    return converters.response_to_pb(answer)


# The RPCs a replica answers for the ingress, each one data-plane call.
_METHODS: dict[str, Callable[[ModelReplica, Any], Any]] = {
    "ServerReady": lambda r, q: pb.ServerReadyResponse(ready=r.plane.server_ready()),
    "ServerMetadata": lambda r, q: r.plane.server_metadata(),
    "ModelReady": lambda r, q: pb.ModelReadyResponse(ready=r.plane.model_ready(q.name, q.version)),
    "ModelMetadata": lambda r, q: r.plane.model_metadata(q.name, q.version),
    "ModelConfig": lambda r, q: r.plane.model_config(q.name, q.version),
    "ModelInfer": _infer,
    "ModelStatistics": lambda r, q: r.plane.statistics(q.name, q.version),
    "RepositoryIndex": lambda r, q: r.plane.repository_index(q.ready),
}
MODEL_METHODS = frozenset(_METHODS)


def _ray_cpus() -> int:
    """ONNX Runtime's threads for this replica: the CPUs Ray gave it (``ray.num_cpus``),
    as Ray does for OpenMP. ORT's own default, every core of the host, oversubscribes a
    node that runs several replicas; 0 (a CPU-free replica) leaves ORT's default."""
    assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    return max(1, math.ceil(assigned)) if assigned > 0 else 0


class ModelReplica:
    """Deployed once per model (``server.cluster.app``); Ray Serve makes the replicas."""

    async def __init__(
        self, repository: str, model: str, revision: str, settings: dict[str, Any]
    ) -> None:
        """``settings``: the settings tree's values for replicas (``app.replica_settings``)."""
        self.model, self.revision = model, revision
        self.key = serve.get_replica_context().replica_id.unique_id
        self.node = ray.util.get_node_ip_address()
        tree = replica_tree(settings)
        models: dict[str, Any] = {"repository": Path(repository), "names": (model,)}
        if not tree.models.intra_op_threads:
            models["intra_op_threads"] = _ray_cpus()
        # No shared memory: a client's region lives on its own host, not the replica's.
        protocol = {"shared_memory": False}
        tree = tree.model_copy(
            update={
                "models": tree.models.model_copy(update=models),
                "protocol": tree.protocol.model_copy(update=protocol),
            }
        )
        core = build_core(tree)
        self.metrics, self.manager, self.plane = core.metrics, core.manager, core.plane
        await self.manager.load(model)  # raises: Ray reports the replica failed to start
        self._http = None
        self.metrics_url = ""
        port = tree.cluster.replica.metrics_port
        if port >= 0:
            self._http = self.metrics.serve(port, "0.0.0.0")
            self.metrics_url = f"http://{self.node}:{self._http.server_port}/metrics"
        registry.register(self.key, self.describe())
        log.info("replica of %s (revision %s) on %s", model, revision, self.node)

    async def call(self, method: str, request: Any) -> Any:
        """The RPC's response, or the ``InferenceError`` it failed with."""
        run = _METHODS.get(method)
        if run is None:
            raise ValueError(f"{method} is not a model RPC; allowed: {sorted(_METHODS)}")
        try:
            answer = run(self, request)
            return await answer if isinstance(answer, Awaitable) else answer
        except InferenceError as exc:
            return exc
        except Exception as exc:  # a bug: logged with its traceback, INTERNAL to the client
            log.exception("%s failed", method)
            return InferenceError(clip(f"{type(exc).__name__}: {exc}"))

    def describe(self) -> dict[str, str | int]:
        """Where this replica runs, at what niceness, and where Prometheus scrapes it."""
        return {
            "replica": self.key,
            "model": self.model,
            "revision": self.revision,
            "node": self.node,
            "pid": os.getpid(),
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "metrics": self.metrics_url,
        }

    def __del__(self) -> None:
        # Ray Serve calls this once the replica drained; the batcher threads die with
        # the process, the metrics port must not outlive a replica that stays alive.
        if getattr(self, "metrics_url", None) is not None:
            registry.unregister(self.key)
        if getattr(self, "_http", None) is not None:
            self._http.shutdown()
            self._http.server_close()
