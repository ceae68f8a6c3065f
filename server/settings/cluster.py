"""Settings of the Ray Serve cluster (``python -m server.cluster``): nodes, deploys, replicas.

The cluster reads the same tree as the single server: its gRPC and HTTP ports are
``listeners``' and a replica's data plane is built from ``models``, ``batching``,
``protocol``, ``images``, ... as ``python -m server`` builds its own. Only what is the
cluster's alone lives here. Per-model replica counts stay in each model's
``config.pbtxt`` (``ray.*`` parameters, see ``server/cluster/settings.py``); the
``replicas`` section overrides them and ``deploy`` writes the overrides there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from server.settings.base import Section, setting

RAY_DEFAULT_TOKEN = "~/.ray/auth_token"  # where Ray's own tools look for the token


class NodeSettings(Section):
    """``up`` starts (or joins) a Ray node with these; ``down --stop-node`` stops it."""

    address: str | None = setting(None, flag="--address", metavar="HEAD:PORT")
    """The head's GCS address. ``up`` joins it (omitted: starts a head here); ``deploy``,
    ``status`` and ``down`` connect to it (omitted: 127.0.0.1 at ``port``)."""
    port: int = setting(6379, flag="--port", ge=1024, le=65535)
    """The head's GCS port."""
    node_ip: str | None = setting(None, flag="--node-ip")
    """The address other nodes reach this one at; also names this node's processes."""
    num_cpus: int | None = setting(None, flag="--num-cpus", ge=0)
    """CPUs Ray may place replicas on (omitted: all cores; 0 on a multi-node head keeps
    model replicas off it)."""
    object_store_mb: int = setting(256, flag="--object-store-mb", ge=64)
    """Ray's object store, MiB (requests and responses are small)."""
    ingress: bool = setting(True, flag="--no-ingress", negate=True)
    """Carry the ingress resource, so ``deploy`` puts an ingress replica here, listening on
    the gRPC port (a request entering here never crosses to another node to be routed)."""
    min_worker_port: int = setting(10002, flag="--min-worker-port", ge=1024, le=65535)
    """Lowest port of Ray's worker range (``ray start --min-worker-port``); the GCS, gRPC and
    HTTP ports must lie outside the range or a worker may take them first."""
    max_worker_port: int = setting(19999, flag="--max-worker-port", ge=1024, le=65535)
    """Highest port of Ray's worker range (``ray start --max-worker-port``)."""
    client_server_port: int = setting(10001, flag="--client-server-port", ge=1024, le=65535)
    """The head's Ray Client server port (``ray start --ray-client-server-port``)."""
    worker_niceness: int = setting(0, flag="--worker-niceness", ge=0, le=19)
    """Niceness of Ray's worker processes: the proxies, the ingress and the model replicas.
    Ray's own default is 15 (below everything else on the host); they are the service, so
    0, as the single server runs."""
    stop_grace_s: float = setting(10.0, flag="--stop-grace-s", gt=0)
    """``down --stop-node``: how long this node's Ray processes get after SIGTERM before
    SIGKILL."""
    auth_mode: Literal["token", "disabled"] = setting(
        "token", flag="--auth-mode", metavar="token|disabled"
    )
    """Ray's token authentication (``RAY_AUTH_MODE``): every connection to the GCS, the
    raylets and the workers must present the cluster's token; disabled: anyone who reaches
    Ray's ports may run code on the cluster."""
    auth_token_file: Path = setting(Path(RAY_DEFAULT_TOKEN), flag="--auth-token-file")
    """The token file (mode 0600). The head's ``up`` creates it when missing; every other
    node and client needs a copy at this path (or ``RAY_AUTH_TOKEN`` in its environment)."""

    @model_validator(mode="after")
    def _range(self) -> NodeSettings:
        if self.min_worker_port > self.max_worker_port:
            raise ValueError(
                f"Ray's worker ports: --min-worker-port {self.min_worker_port} > "
                f"--max-worker-port {self.max_worker_port}"
            )
        return self

    @property
    def is_head(self) -> bool:
        return self.address is None

    @property
    def connect_address(self) -> str:
        """Where ``deploy``, ``status`` and ``down`` find the cluster."""
        return self.address or f"127.0.0.1:{self.port}"

    @property
    def token_path(self) -> Path:
        return self.auth_token_file.expanduser()


class DeploySettings(Section):
    """What ``deploy`` (and the head's ``up``) deploys, and how long it waits."""

    repository: Path = setting(Path("model_repository"), flag="--model-repository")
    """The model repository, at the same path on every node."""
    models: tuple[str, ...] = setting((), flag="--models", metavar="MODEL", nargs="*")
    """Deploy only these models (space-separated); default: every model in the repository."""
    timeout_s: float = setting(300.0, flag="--deploy-timeout-s", gt=0)
    """How long ``deploy`` waits for every replica to run before it fails saying which
    replicas could not be placed."""
    default_min_replicas: int = setting(2, flag="--default-min-replicas", ge=1)
    """Replicas per model where neither ``config.pbtxt`` (``ray.min_replicas``) nor a flag
    says: two, placed on different nodes where nodes allow, so losing one node leaves one
    serving."""
    ingress_replicas: int | None = setting(None, flag="--ingress-replicas", ge=1)
    """Ingress replicas (default: one on every node that carries the ingress resource, each
    listening on that node's gRPC port)."""


class ReplicaOverrides(Section):
    """Given to ``deploy``, these win over every deployed model's ``config.pbtxt`` and are
    written into it as ``ray.*`` parameters, so a later plain ``deploy`` keeps them."""

    min_replicas: int | None = setting(None, flag="--min-replicas", ge=1)
    """Fewest replicas per model (``ray.min_replicas``)."""
    max_replicas: int | None = setting(None, flag="--max-replicas", ge=1)
    """Most replicas per model under autoscaling (``ray.max_replicas``)."""
    target_ongoing_requests: float | None = setting(None, flag="--target-ongoing-requests", gt=0)
    """Requests per replica the autoscaler aims for (``ray.target_ongoing_requests``)."""
    num_cpus: float | None = setting(None, flag="--replica-cpus", ge=0)
    """Ray CPUs each replica reserves (``ray.num_cpus``)."""


class ReplicaSettings(Section):
    """Each model replica's own endpoints (its data plane comes from the rest of the tree)."""

    metrics_port: int = setting(0, flag="--replica-metrics-port", ge=-1, le=65535)
    """Port of each replica's Prometheus /metrics on its node: 0 a free one per replica,
    -1 none."""


class ProxySettings(Section):
    """Each node's gRPC listener (the ingress replica; its port is ``listeners``' gRPC port)."""

    request_timeout_s: float | None = setting(None, flag="--proxy-request-timeout-s", gt=0)
    """Longest a request may wait for its model replica; omitted: the client's deadline
    decides."""
    fanout_timeout_s: float = setting(10.0, flag="--proxy-fanout-timeout-s", gt=0)
    """Longest a server-wide RPC (ServerReady, RepositoryIndex, every model's statistics)
    waits for each model; one without an answer by then (no replica placed yet, its node
    lost) counts as unavailable instead of holding the call."""


class ClusterSettings(Section):
    """The cluster's nodes, deploys and replicas."""

    nodes: NodeSettings = NodeSettings()
    """The Ray node ``up`` starts or joins."""
    deploy: DeploySettings = DeploySettings()
    """The repository deployed and the deploy's bounds."""
    replicas: ReplicaOverrides = ReplicaOverrides()
    """Replica counts and CPUs over every model's ``config.pbtxt``."""
    replica: ReplicaSettings = ReplicaSettings()
    """Each model replica's endpoints."""
    proxy: ProxySettings = ProxySettings()
    """Each node's gRPC listener (the ingress replica)."""
