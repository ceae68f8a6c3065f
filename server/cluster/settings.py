"""What a cluster deployment looks like: one frozen plan per model, read from config.pbtxt.

Replica counts belong with the model (like ``instance_group`` does for one
machine), so they are ``config.pbtxt`` parameters; ``deploy``'s flags write them
there for every model deployed (``persist``), so the next deploy keeps them:

    parameters { key: "ray.min_replicas"            value { string_value: "1" } }
    parameters { key: "ray.max_replicas"            value { string_value: "4" } }
    parameters { key: "ray.target_ongoing_requests" value { string_value: "4" } }
    parameters { key: "ray.num_cpus"                value { string_value: "1" } }

min == max means a fixed replica count (no autoscaling). Without a count the
cluster's default applies (``cluster.deploy.default_min_replicas``: 2). No node holds more
than ``ceil(max_replicas / nodes)`` of a model's replicas, so the default two are on
two nodes whenever there are two. The ``ray.*``
parameters are not part of the model's revision: changing them scales (or, for
``num_cpus``, re-places) the replicas without counting as a new model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrepo.files import model_folders, read_config, to_pbtxt, write_config
from modelrepo.spec import ModelSpec, load_spec
from server.settings import Settings
from server.settings.cluster import DeploySettings, ReplicaOverrides

PARAM_PREFIX = "ray."
APP_NAME = "kserve"
INGRESS = "kserve"
# The node resource that places the ingress replicas (none: anywhere, CPU-free).
INGRESS_RESOURCE = "kserve_ingress"
# Model X is application "model-X" with deployment "X": the ingress finds models by it.
MODEL_APP_PREFIX = "model-"


def model_app_name(model: str) -> str:
    return MODEL_APP_PREFIX + model


@dataclass(frozen=True)
class ReplicaPlan:
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 4.0
    num_cpus: float = 1.0
    max_ongoing_requests: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"replicas: need 1 <= min ({self.min_replicas}) <= max ({self.max_replicas})"
            )
        if self.target_ongoing_requests <= 0 or self.num_cpus < 0:
            raise ValueError(
                f"target_ongoing_requests {self.target_ongoing_requests} must be > 0 and "
                f"num_cpus {self.num_cpus} >= 0"
            )

    def serve_options(self, nodes: int | None = None) -> dict[str, object]:
        """Keyword arguments for ``Deployment.options``. With ``nodes`` (the nodes that
        may hold replicas) no node takes more than its share of ``max_replicas``: Serve's
        own spreading is a preference, and two replicas on one node are not HA."""
        options: dict[str, object] = {
            "ray_actor_options": {"num_cpus": self.num_cpus},
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        if nodes:
            options["max_replicas_per_node"] = math.ceil(self.max_replicas / nodes)
        if self.min_replicas == self.max_replicas:
            options["num_replicas"] = self.min_replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        return options


@dataclass(frozen=True)
class ModelPlan:
    name: str
    replicas: ReplicaPlan
    # Changes whenever a version folder or the config changes: a new revision makes
    # Ray Serve replace the replicas one after another (a rolling update).
    revision: str


def _number(spec: ModelSpec, key: str, kind: type[float] | type[int]) -> float | int | None:
    params = spec.config.parameters
    name = PARAM_PREFIX + key
    if name not in params:
        return None
    text = params[name].string_value
    try:
        return kind(text)
    except ValueError as exc:
        raise ValueError(
            f"model '{spec.name}': parameter {name} is {text!r}, not a {kind.__name__}"
        ) from exc


_KINDS: dict[str, type[float] | type[int]] = {
    "min_replicas": int,
    "max_replicas": int,
    "target_ongoing_requests": float,
    "num_cpus": float,
}


def replica_plan(spec: ModelSpec, overrides: ReplicaOverrides, default_min: int = 1) -> ReplicaPlan:
    """config.pbtxt's values (a min alone is a fixed count; none: ``default_min``, capped
    by a max), then the flags on top."""
    values = {k: v for k, kind in _KINDS.items() if (v := _number(spec, k, kind)) is not None}
    if "min_replicas" not in values:
        values["min_replicas"] = min(default_min, values.get("max_replicas", default_min))
    values.setdefault("max_replicas", values["min_replicas"])
    flags = {k: v for k in _KINDS if (v := getattr(overrides, k)) is not None}
    values.update(flags)
    low, high = values["min_replicas"], values["max_replicas"]
    if low > high and flags.keys() & {"min_replicas", "max_replicas"}:  # the flag wins
        values["min_replicas" if "max_replicas" in flags else "max_replicas"] = (
            high if "max_replicas" in flags else low
        )
    return ReplicaPlan(**values)  # type: ignore[arg-type]


def revision(model_dir: Path) -> str:
    """A digest of the names, sizes and times of the model's files, and of its config
    without the ``ray.*`` parameters (those change the replicas, not the model)."""
    digest = hashlib.sha256()
    config = read_config(model_dir)
    for key in [k for k in config.parameters if k.startswith(PARAM_PREFIX)]:
        del config.parameters[key]
    digest.update(to_pbtxt(config).encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        if path == model_dir / "config.pbtxt":
            continue
        stat = path.stat()
        digest.update(f"{path.relative_to(model_dir)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def persist(repository: Path, models: list[str], overrides: ReplicaOverrides) -> None:
    """Write the flags given to ``deploy`` into each model's config.pbtxt as ``ray.*``
    parameters, so a later deploy without them keeps them (written atomically)."""
    given = {k: v for k in _KINDS if (v := getattr(overrides, k)) is not None}
    if not given:
        return
    for name in models:
        config = read_config(repository / name)
        params = config.parameters
        for key, value in given.items():
            params[PARAM_PREFIX + key].string_value = str(value)
        low, high = PARAM_PREFIX + "min_replicas", PARAM_PREFIX + "max_replicas"
        if low in params and high in params:
            if int(params[low].string_value) > int(params[high].string_value):
                del params[high if "min_replicas" in given else low]  # the flag wins
        write_config(repository / name, config)


def plan(
    repository: Path,
    models: tuple[str, ...] = (),
    overrides: ReplicaOverrides | None = None,
    deploy: DeploySettings | None = None,
) -> list[ModelPlan]:
    """One plan per model of ``repository`` (or the named ones)."""
    default_min = (deploy or DeploySettings()).default_min_replicas
    names = list(models) or model_folders(repository)
    if not names:
        raise ValueError(f"no models (folders with config.pbtxt) in {repository}")
    unknown = sorted(set(names) - set(model_folders(repository)))
    if unknown:
        raise ValueError(
            f"models {unknown} not in {repository}; there: {model_folders(repository)}"
        )
    overrides = overrides or ReplicaOverrides()
    return [
        ModelPlan(
            name=name,
            replicas=replica_plan(load_spec(repository / name), overrides, default_min),
            revision=revision(repository / name),
        )
        for name in names
    ]


# The sections a model replica's data plane is built from (server/core/wiring.py): the
# single server's own; tracing stays off (TraceSetting is not routed through the cluster).
REPLICA_SECTIONS = ("models", "batching", "repository", "protocol", "images", "requests")


def replica_settings(settings: Settings) -> dict[str, Any]:
    """The tree's values a model replica reads, non-defaults only, as the model application's
    argument: it changes (and Serve rolls the replicas) only when one of them changes."""
    include: dict[str, Any] = {name: True for name in REPLICA_SECTIONS}
    include["cluster"] = {"replica": True}
    tree = settings.model_dump(
        mode="json",
        include=include,
        exclude={"models": {"repository", "names"}},  # each application names its own
        exclude_defaults=True,
    )
    return {section: values for section, values in tree.items() if values}


def replica_tree(values: dict[str, Any]) -> Settings:
    """The tree back from ``replica_settings``: the deploy's values only, not the node's
    ``CNN_SERVING_*`` environment (every replica of a deploy is built alike)."""
    sections = {
        name: Settings.model_fields[name].annotation.model_validate(given)  # type: ignore[union-attr]
        for name, given in values.items()
    }
    return Settings.model_construct(**sections)
