"""The Ray Serve applications: the ``kserve`` ingress and one application per model.

``deploy`` applies one declarative Serve config (the same schema as ``serve
deploy`` and KubeRay's ``serveConfigV2``): the ingress application at route
prefix ``/`` and one application per model, whose arguments carry the model's
revision. Serve restarts an application's replicas only when its import path or
arguments change, so a deploy rolls exactly the models whose revision changed
(a new replica loaded and warmed up before an old one stops taking requests,
and the old one drains what it accepted); unchanged models and the ingress keep
their replicas, and a changed replica count only adds or removes replicas. The
ingress's arguments name no models (each ingress replica reads them from Serve's
controller, ``routes.py``), so adding or removing a model starts or deletes only
that model's application.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from server.cluster.frontend import LISTENER_FIELDS
from server.cluster.ingress import KServeIngress
from server.cluster.replica import ModelReplica
from server.cluster.settings import (
    APP_NAME,
    INGRESS,
    INGRESS_RESOURCE,
    MODEL_APP_PREFIX,
    ModelPlan,
    model_app_name,
    plan,
    replica_settings,
)
from server.settings import Settings
from server.settings.cluster import ReplicaOverrides

POLL_S = 0.5  # Serve's controller recomputes statuses every 0.1 s; nothing to wait on


# The ingress replicas: CPU-free, on nodes carrying the ingress resource (every node `up` starts).
INGRESS_ACTOR: dict[str, Any] = {"num_cpus": 0, "resources": {INGRESS_RESOURCE: 0.001}}


# No line per request in Serve's replica logs (it cost the ingress and the replicas
# CPU on every call); the servers' own logs, metrics and traces stay.
QUIET: dict[str, Any] = {"enable_access_log": False}


def ingress_deployment(replicas: int | None, nodes: int) -> dict[str, Any]:
    """The ingress's Serve options, ``nodes`` being the nodes with the ingress resource.

    ``replicas`` None: one replica on every such node (every node ``up`` starts), each
    listening on its node's gRPC port (``frontend.py``): a request entering at a worker
    never crosses to the head."""
    return {
        "name": INGRESS,
        "num_replicas": replicas or max(1, nodes),
        "max_replicas_per_node": 1,
        "ray_actor_options": INGRESS_ACTOR,
        "logging_config": dict(QUIET),
    }


def ingress_nodes() -> int:
    """Live nodes carrying the ingress resource (needs a Ray connection)."""
    import ray  # late: a Ray connection exists by now

    return sum(1 for n in ray.nodes() if n["Alive"] and INGRESS_RESOURCE in n["Resources"])


class DeployError(RuntimeError):
    """A deploy that failed or could not place its replicas in time."""


def start() -> None:
    """Serve's controller (idempotent), without Serve's proxies: each node's ingress
    replica listens itself (one actor call per request instead of two)."""
    serve.start(proxy_location=PROXY_LOCATION)


# No Serve proxy anywhere: the ingress replicas are the listeners.
PROXY_LOCATION = "Disabled"


def ingress_settings(settings: Settings) -> dict[str, Any]:
    """The tree's values each node's listener reads, non-defaults only, as the ingress
    application's argument (changing one restarts the ingress replicas)."""
    tree = settings.model_dump(mode="json", include=LISTENER_FIELDS, exclude_defaults=True)
    return {section: values for section, values in tree.items() if values}


def serve_config(
    repository: Path, plans: list[ModelPlan], settings: Settings, nodes: int = 1
) -> dict[str, Any]:
    """The declarative Serve config (``ServeDeploySchema``) for the repository's models;
    ``nodes``: how many nodes carry the ingress resource."""
    ingress_app = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": "server.cluster.app:ingress_app",
        "args": {"listener": ingress_settings(settings)},  # no models: see routes.py
        "deployments": [ingress_deployment(settings.cluster.deploy.ingress_replicas, nodes)],
    }
    model_apps = [
        {
            "name": model_app_name(p.name),
            "route_prefix": None,  # reached through the ingress only
            "import_path": "server.cluster.app:model_app",
            "args": {
                "model_repository": str(repository.resolve()),
                "model": p.name,
                "revision": p.revision,  # a new revision: Serve rolls this model's replicas
                "settings": replica_settings(settings),
            },
            "deployments": [
                {"name": p.name, **p.replicas.serve_options(nodes), "logging_config": dict(QUIET)}
            ],
        }
        for p in plans
    ]
    return {"proxy_location": PROXY_LOCATION, "applications": [ingress_app, *model_apps]}


def model_app(args: dict[str, Any]) -> serve.Application:
    """One model's application (the config's ``import_path``)."""
    return (
        serve.deployment(ModelReplica)
        .options(name=args["model"])
        .bind(
            args["model_repository"],
            args["model"],
            args["revision"],
            args.get("settings", {}),
        )
    )


def ingress_app(args: dict[str, Any]) -> serve.Application:
    """The ingress application, from the listener's settings only: its replicas find the
    model applications themselves, so adding a model changes nothing here (a
    ``models`` argument from an older config is ignored)."""
    return (
        serve.deployment(KServeIngress)
        .options(name=INGRESS)
        .bind(None, dict(args.get("listener", {})))
    )


def apply(config: dict[str, Any], timeout_s: float | None) -> None:
    """Deploy the config; with a timeout, return once every application runs (the ingress
    application runs once each of its replicas listens) and removed models' applications
    are deleted."""
    schema = ServeDeploySchema.model_validate(config)
    start()
    _get_global_client().deploy_apps(schema)
    if timeout_s is not None:
        wait_running([a.name for a in schema.applications], timeout_s)


def wait_running(names: list[str], timeout_s: float) -> None:
    """Until every application runs and the models' applications not named are deleted
    (a removed model answers as unknown once ``deploy`` returns); a failed application
    or the timeout raises ``DeployError``."""
    deadline = time.monotonic() + timeout_s
    while True:
        time.sleep(POLL_S)
        status = serve.status()
        apps = status.applications
        failed = [n for n in names if n in apps and apps[n].status == "DEPLOY_FAILED"]
        if failed:
            raise DeployError("; ".join(f"{n}: {apps[n].message}" for n in failed))
        removed = [n for n in apps if n.startswith(MODEL_APP_PREFIX) and n not in names]
        if not removed and all(n in apps and apps[n].status == "RUNNING" for n in names):
            return
        if time.monotonic() > deadline:
            raise DeployError(unplaced(apps, names, timeout_s, removed))


def unplaced(apps: dict[str, Any], names: list[str], timeout_s: float, removed: list[str]) -> str:
    """What keeps the deploy from running: replicas that have no place, and Serve's why;
    removed models' applications not deleted yet."""
    lines = [f"application {name} is still being deleted" for name in removed]
    for name in names:
        app = apps.get(name)
        if app is None:
            lines.append(f"application {name} was not created")
            continue
        for deployment, overview in app.deployments.items():
            states = {getattr(k, "value", k): v for k, v in overview.replica_states.items()}
            waiting = sum(v for k, v in states.items() if k != "RUNNING")
            if overview.status != "HEALTHY" or waiting:
                why = overview.message or f"replicas {states}"
                lines.append(f"cannot place {waiting} replicas of {deployment}: {why}")
    return f"not running after {timeout_s:g} s: " + ("; ".join(lines) or "no reason given")


def from_args(args: dict[str, str]) -> serve.Application:
    """One application holding the ingress and every model, for a Serve config file
    (KubeRay's ``serveConfigV2``):

        import_path: server.cluster.app:from_args
        args: {model_repository: /models, models: "a,b", min_replicas: "2", ...}

    The config file then carries ``proxy_location: Disabled`` (the ingress listens on
    port 8001 of each node itself, with the default listener settings). Every
    model shares the application's code version, so any change rolls them all:
    ``python -m server.cluster deploy --serve-config FILE`` writes the per-model form.
    """
    known = {"model_repository", "models", *ReplicaOverrides.model_fields}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown args {unknown}; allowed: {sorted(known)}")
    number = {"min_replicas": int, "max_replicas": int}
    overrides = ReplicaOverrides(
        **{
            key: number.get(key, float)(args[key])
            for key in ReplicaOverrides.model_fields
            if key in args
        }
    )
    repository = Path(args.get("model_repository", "/models"))
    models = tuple(m for m in args.get("models", "").split(",") if m)
    plans = plan(repository, models, overrides)
    handles = {
        p.name: serve.deployment(ModelReplica)
        .options(name=p.name, **p.replicas.serve_options())
        .bind(str(repository.resolve()), p.name, p.revision, {})
        for p in plans
    }
    return (
        serve.deployment(KServeIngress)
        .options(name=INGRESS, ray_actor_options=INGRESS_ACTOR)
        .bind(handles)
    )
