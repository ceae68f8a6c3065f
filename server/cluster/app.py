"""The Ray Serve application: an ingress deployment and one deployment per model.

``deploy`` is idempotent: deploying again with a new model revision (a newly
exported version, a changed config) makes Ray Serve replace that model's
replicas one after another, each new one loaded and warmed up before an old
one stops taking requests, and an old one drains what it accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray import serve
from ray.serve.config import gRPCOptions

from server.cluster.ingress import KServeIngress
from server.cluster.replica import ModelReplica, ReplicaSettings
from server.cluster.settings import (
    APP_NAME,
    GRPC_SERVICER,
    INGRESS,
    INGRESS_RESOURCE,
    ModelPlan,
    ReplicaOverrides,
    plan,
)


@dataclass(frozen=True)
class ProxyOptions:
    grpc_port: int = 8001  # Triton's gRPC port, on every node
    http_port: int = 8000  # Ray's HTTP proxy (unused by this service; Triton's HTTP port)
    host: str = "0.0.0.0"
    request_timeout_s: float | None = None  # None: the client's deadline decides


@dataclass(frozen=True)
class IngressOptions:
    replicas: int = 1
    # Place the ingress on nodes started with this custom resource (``up --ingress``):
    # the head, which runs no model replicas, so a worker lost with its replicas never
    # takes an ingress replica (and the calls it holds) with it.
    on_ingress_nodes: bool = True


def start(proxy: ProxyOptions) -> None:
    """Serve's controller and a gRPC proxy on every node (idempotent)."""
    serve.start(
        proxy_location="EveryNode",
        http_options={"host": proxy.host, "port": proxy.http_port},
        grpc_options=gRPCOptions(
            port=proxy.grpc_port,
            grpc_servicer_functions=[GRPC_SERVICER],
            request_timeout_s=proxy.request_timeout_s,
        ),
    )


def build(
    repository: Path,
    plans: list[ModelPlan],
    settings: ReplicaSettings,
    ingress: IngressOptions,
) -> serve.Application:
    handles = {
        p.name: serve.deployment(ModelReplica)
        .options(name=p.name, **p.replicas.serve_options())
        .bind(str(repository.resolve()), p.name, p.revision, settings)
        for p in plans
    }
    actor = {"num_cpus": 0}
    if ingress.on_ingress_nodes:
        actor["resources"] = {INGRESS_RESOURCE: 0.001}
    return (
        serve.deployment(KServeIngress)
        .options(name=INGRESS, num_replicas=ingress.replicas, ray_actor_options=actor)
        .bind(handles)
    )


def deploy(app: serve.Application) -> None:
    """Deploy or update; returns once every deployment runs its target replicas."""
    # route_prefix "/": without one the gRPC proxy answers NOT_FOUND ("Application
    # metadata not set") to clients that send no ``application`` header, as tritonclient.
    serve.run(app, name=APP_NAME, route_prefix="/")


def from_args(args: dict[str, str]) -> serve.Application:
    """The application for a Serve config file (KubeRay's ``serveConfigV2``):

        import_path: server.cluster.app:from_args
        args: {model_repository: /models, models: "a,b", min_replicas: "2", ...}

    The config file then carries ``proxy_location`` and ``grpc_options``
    (port, ``GRPC_SERVICER``) that ``start`` sets here; route_prefix "/".
    """
    known = {"model_repository", "models", *ReplicaOverrides.__dataclass_fields__}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown args {unknown}; allowed: {sorted(known)}")
    number = {"min_replicas": int, "max_replicas": int}
    overrides = ReplicaOverrides(
        **{
            key: number.get(key, float)(args[key])
            for key in ReplicaOverrides.__dataclass_fields__
            if key in args
        }
    )
    repository = Path(args.get("model_repository", "/models"))
    models = tuple(m for m in args.get("models", "").split(",") if m)
    plans = plan(repository, models, overrides)
    return build(repository, plans, ReplicaSettings(), IngressOptions())
