"""The Kubernetes manifests (deploy/k8s/) validated offline.

Built-in kinds go through ``kubernetes-validate`` (the API's own OpenAPI
schemas, strict: unknown fields fail). KubeRay's ``RayService`` is a CRD whose
schema is not shipped here: its pod templates are validated as built-in
``PodTemplate`` objects, its ``serveConfigV2`` with Ray Serve's own config
schema and against what ``python -m server.cluster serve-config`` writes for the
same models; the rest of the CRD (field names of ``rayClusterConfig``, such as
``gcsFaultToleranceOptions`` and ``authOptions``, taken from KubeRay's API
reference) is checked for presence only.
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


def _serve_config(service: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def test_rayservice_pod_templates_and_serve_config_are_valid() -> None:
    pytest.importorskip("ray.serve", reason="the `cluster` extra (ray[serve]) is not installed")
    from ray.serve.schema import ServeDeploySchema

    from server.cluster.settings import INGRESS_RESOURCE, model_app_name

    (service,) = _documents("rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        _validate(service)  # the CRD itself: no schema offline (said in the module docstring)
    for template in _pod_templates(service):
        _validate(template)
    config = ServeDeploySchema.model_validate(_serve_config(service))
    assert config.proxy_location.value == "Disabled"  # each node's ingress listens itself
    ingress, *models = config.applications
    assert ingress.route_prefix == "/" and ingress.import_path == "server.cluster.app:ingress_app"
    assert models and all(a.import_path == "server.cluster.app:model_app" for a in models)
    assert ingress.args == {"listener": {}}  # no models: adding one leaves the ingress alone
    assert all(a.name == model_app_name(a.args["model"]) for a in models)  # how it finds them
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0"
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert INGRESS_RESOURCE in group["rayStartParams"]["resources"]  # an ingress per node
    host, _, port = cluster["gcsFaultToleranceOptions"]["redisAddress"].rpartition(":")
    assert host and port.isdigit()
    assert cluster["authOptions"] == {"mode": "token"}


def _generating_command(text: str) -> list[str]:
    """The `python -m server.cluster serve-config ...` lines of the manifest's comment."""
    lines = [line.lstrip("# ").rstrip("\\ ") for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if "server.cluster serve-config" in line)
    end = next(i for i in range(start, len(lines)) if not text.splitlines()[i].endswith("\\"))
    words = " ".join(lines[start : end + 1]).split()
    return words[words.index("serve-config") :]


def test_the_serve_config_is_what_the_cluster_command_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One application per model, as `deploy` applies them: regenerated from a repository
    with the same models, only the repository's path and the revisions differ."""
    pytest.importorskip("ray.serve", reason="the `cluster` extra (ray[serve]) is not installed")
    from server.cluster.__main__ import main

    (service,) = _documents("rayservice.yaml")
    manifest = _serve_config(service)
    for app in manifest["applications"][1:]:
        folder = tmp_path / app["args"]["model"]
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.onnx").write_bytes(b"onnx")
        (folder / "config.pbtxt").write_text(MODEL_CONFIG.format(name=app["args"]["model"]))
    command = _generating_command((K8S / "rayservice.yaml").read_text())
    command[command.index("--model-repository") + 1] = str(tmp_path)
    assert main(command) == 0
    written = yaml.safe_load(capsys.readouterr().out)
    pairs = zip(written["applications"][1:], manifest["applications"][1:], strict=True)
    for ours, theirs in pairs:
        assert ours["args"]["model_repository"] == str(tmp_path.resolve())
        assert len(ours["args"]["revision"]) == 16
        ours["args"].update(model_repository="/models", revision=theirs["args"]["revision"])
    assert written == manifest


MODEL_CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input {{ name: "input" data_type: TYPE_FP32 dims: 3 dims: 8 dims: 8 }}
output {{ name: "logits" data_type: TYPE_FP32 dims: 10 }}
"""


def test_the_serve_config_args_build_the_applications(tmp_path: Path) -> None:
    """The manifest's args go to the same builders `deploy` uses; the one-application
    form (`from_args`) still refuses what it does not know."""
    pytest.importorskip("ray.serve", reason="the `cluster` extra (ray[serve]) is not installed")
    from ray import serve

    from server.cluster.app import from_args, ingress_app, model_app

    (service,) = _documents("rayservice.yaml")
    ingress, *models = _serve_config(service)["applications"]
    assert isinstance(ingress_app(ingress["args"]), serve.Application)
    for app in models:
        assert isinstance(model_app(app["args"]), serve.Application)
    with pytest.raises(ValueError, match="no models"):
        from_args({"model_repository": str(tmp_path)})
    with pytest.raises(ValueError, match="unknown args \\['replicas'\\]"):
        from_args({"replicas": "2"})
