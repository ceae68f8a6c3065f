"""The Kubernetes manifests (deploy/k8s/) validated offline.

Built-in kinds go through ``kubernetes-validate`` (the API's own OpenAPI
schemas, strict: unknown fields fail). KubeRay's ``RayService`` is a CRD whose
schema is not shipped here: its pod templates are validated as built-in
``PodTemplate`` objects and its ``serveConfigV2`` with Ray Serve's own config
schema; the rest of the CRD (field names of ``rayClusterConfig``) is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.kit.deploy_tools import ROOT

K8S = ROOT / "deploy" / "k8s"
VERSION = kubernetes_validate.latest_version()


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_single_server_manifests_are_valid_and_probe_grpc_health() -> None:
    docs = {d["kind"]: d for d in _documents("server.yaml")}
    assert set(docs) == {"PersistentVolumeClaim", "Deployment", "Service"}
    for doc in docs.values():
        _validate(doc)
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["grpc"] == {"port": 8001}  # grpc.health.v1 Check
    ports = {p["name"]: p["port"] for p in docs["Service"]["spec"]["ports"]}
    assert ports == {"grpc": 8001, "metrics": 8002}


def test_a_broken_manifest_is_caught() -> None:
    """The validator is not a no-op: a misspelt probe field fails."""
    deployment = _documents("server.yaml")[1]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"] = {
        "prot": 8001
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment)


def _pod_templates(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": g}
        for g in (group["template"] for group in groups)
    ]


def test_rayservice_pod_templates_and_serve_config_are_valid() -> None:
    pytest.importorskip("ray.serve", reason="the `cluster` extra (ray[serve]) is not installed")
    from ray.serve.schema import ServeDeploySchema

    from server.cluster.settings import GRPC_SERVICER, INGRESS_RESOURCE

    (service,) = _documents("rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        _validate(service)  # the CRD itself: no schema offline (said in the module docstring)
    for template in _pod_templates(service):
        _validate(template)
    config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert config.proxy_location.value == "EveryNode"
    assert config.grpc_options.grpc_servicer_functions == [GRPC_SERVICER]
    (app,) = config.applications
    assert app.route_prefix == "/" and app.import_path == "server.cluster.app:from_args"
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and INGRESS_RESOURCE in head["resources"]


def test_the_serve_config_args_build_the_application(tmp_path: Path) -> None:
    """The RayService's args go through the same plan as `python -m server.cluster deploy`."""
    pytest.importorskip("ray.serve", reason="the `cluster` extra (ray[serve]) is not installed")
    from server.cluster.app import from_args

    (service,) = _documents("rayservice.yaml")
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    with pytest.raises(ValueError, match="no models"):
        from_args({**args, "model_repository": str(tmp_path)})
    with pytest.raises(ValueError, match="unknown args \\['replicas'\\]"):
        from_args({"replicas": "2"})
