"""Settings of the Ray Serve cluster (``python -m server.cluster``): nodes, deploys, replicas.

Per-model replica settings stay in each model's ``config.pbtxt`` (``ray.*``
parameters, see ``server/cluster/settings.py``); these are the cluster's own
defaults and bounds.
"""

from __future__ import annotations

from server.settings.base import Section, setting


class ClusterSettings(Section):
    """The cluster's nodes, deploys and replica defaults."""

    min_worker_port: int = setting(10002, ge=1024, le=65535)
    """Lowest port of Ray's worker range (``ray start --min-worker-port``); the GCS, gRPC and
    HTTP ports must lie outside the range or a worker may take them first."""

    max_worker_port: int = setting(19999, ge=1024, le=65535)
    """Highest port of Ray's worker range (``ray start --max-worker-port``)."""

    client_server_port: int = setting(10001, ge=1024, le=65535)
    """The head's Ray Client server port (``ray start --ray-client-server-port``)."""

    worker_niceness: int = setting(0, ge=0, le=19)
    """Niceness of Ray's worker processes: the proxies, the ingress and the model replicas.
    Ray's own default is 15 (below everything else on the host); they are the service, so
    0, as the single server runs."""

    default_min_replicas: int = setting(2, ge=1)
    """Replicas per model where neither ``config.pbtxt`` (``ray.min_replicas``) nor a flag
    says: two, placed on different nodes where nodes allow, so losing one node leaves one
    serving."""

    deploy_timeout_s: float = setting(300.0, gt=0)
    """How long ``deploy`` waits for every replica to run before it fails saying which
    replicas could not be placed."""

    stop_grace_s: float = setting(10.0, gt=0)
    """``down --stop-node``: how long this node's Ray processes get after SIGTERM before
    SIGKILL."""
