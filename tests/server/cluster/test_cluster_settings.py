"""The cluster's deployment plan from config.pbtxt and flags, and its ``ray start`` lines
(no Ray needed: the live cluster is tests/server/cluster/test_cluster.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelrepo.files import read_config
from server.cluster.nodes import check_ports, node_env, start_command
from server.cluster.settings import INGRESS_RESOURCE, ReplicaPlan, persist, plan
from server.settings.cluster import DeploySettings, NodeSettings, ReplicaOverrides

CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input {{ name: "input" data_type: TYPE_FP32 dims: 1 dims: 8 dims: 8 }}
output {{ name: "logits" data_type: TYPE_FP32 dims: 10 }}
{params}
"""


def _model(repo: Path, name: str, **params: str) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(b"onnx")
    text = "".join(
        f'parameters {{ key: "ray.{k}" value {{ string_value: "{v}" }} }}\n'
        for k, v in params.items()
    )
    (folder / "config.pbtxt").write_text(CONFIG.format(name=name, params=text))
    return folder


def test_replicas_come_from_config_pbtxt_and_flags_override_them(tmp_path: Path) -> None:
    _model(tmp_path, "a", min_replicas="2", max_replicas="6", target_ongoing_requests="3")
    _model(tmp_path, "b", min_replicas="3", num_cpus="0.5")
    _model(tmp_path, "c")
    plans = {p.name: p.replicas for p in plan(tmp_path)}
    assert plans["a"] == ReplicaPlan(min_replicas=2, max_replicas=6, target_ongoing_requests=3)
    assert plans["b"] == ReplicaPlan(min_replicas=3, max_replicas=3, num_cpus=0.5)
    assert plans["c"] == ReplicaPlan(min_replicas=2, max_replicas=2)  # the cluster default
    auto = plans["a"].serve_options()
    assert auto["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 6,
        "target_ongoing_requests": 3.0,
    }
    assert "num_replicas" not in auto
    assert plans["b"].serve_options()["num_replicas"] == 3
    # On 3 nodes no node takes more than its share: a is spread 2 per node, c 1 per node.
    assert plans["a"].serve_options(3)["max_replicas_per_node"] == 2
    assert plans["c"].serve_options(3)["max_replicas_per_node"] == 1
    assert "max_replicas_per_node" not in plans["c"].serve_options()
    forced = {p.name: p.replicas for p in plan(tmp_path, (), ReplicaOverrides(min_replicas=1))}
    assert forced["b"].min_replicas == 1 and forced["b"].max_replicas == 3


def test_bad_values_name_the_parameter_and_the_value(tmp_path: Path) -> None:
    _model(tmp_path, "a", min_replicas="two")
    with pytest.raises(ValueError, match=r"ray\.min_replicas is 'two', not a int"):
        plan(tmp_path)
    _model(tmp_path, "b", min_replicas="4", max_replicas="2")
    with pytest.raises(ValueError, match=r"min \(4\) <= max \(2\)"):
        plan(tmp_path, ("b",))
    with pytest.raises(ValueError, match=r"models \['zz'\] not in"):
        plan(tmp_path, ("zz",))


def test_a_new_version_changes_the_revision(tmp_path: Path) -> None:
    """A new revision is what makes Ray Serve roll the replicas."""
    folder = _model(tmp_path, "a")
    (before,) = plan(tmp_path)
    (folder / "2").mkdir()
    (folder / "2" / "model.onnx").write_bytes(b"onnx v2")
    (after,) = plan(tmp_path)
    assert before.revision != after.revision
    assert plan(tmp_path)[0].revision == after.revision  # stable while nothing changes


def test_ray_start_lines_for_a_head_and_a_worker() -> None:
    head = start_command(NodeSettings(num_cpus=0, object_store_mb=128), python="py")
    assert head[:5] == ["py", "-m", "ray.scripts.scripts", "start", "--head"]
    assert "--num-cpus=0" in head and "--include-dashboard=false" in head
    assert f"--object-store-memory={128 << 20}" in head
    resources = next(a for a in head if a.startswith("--resources="))
    assert json.loads(resources.split("=", 1)[1]) == {INGRESS_RESOURCE: 1000}
    worker = start_command(NodeSettings(address="10.0.0.1:6379"), block=True, python="py")
    assert "--address=10.0.0.1:6379" in worker and "--block" in worker
    assert not any(a.startswith(("--num-cpus", "--head")) for a in worker)
    assert any(a.startswith("--resources") for a in worker)  # an ingress beside its proxy
    alone = start_command(NodeSettings(address="10.0.0.1:6379", ingress=False))
    assert not any(a.startswith("--resources") for a in alone)


def test_the_default_is_two_replicas_and_a_max_alone_caps_it(tmp_path: Path) -> None:
    _model(tmp_path, "a")
    _model(tmp_path, "b", max_replicas="1")
    plans = {p.name: p.replicas for p in plan(tmp_path)}
    assert (plans["a"].min_replicas, plans["a"].max_replicas) == (2, 2)
    assert (plans["b"].min_replicas, plans["b"].max_replicas) == (1, 1)
    three = DeploySettings(default_min_replicas=3)
    assert plan(tmp_path, ("a",), None, three)[0].replicas.min_replicas == 3


def test_deploy_flags_are_kept_in_config_pbtxt_without_changing_the_revision(
    tmp_path: Path,
) -> None:
    """A plain deploy after ``deploy --min-replicas 3`` keeps 3; the model is not "new"."""
    folder = _model(tmp_path, "a", min_replicas="1", max_replicas="2")
    (before,) = plan(tmp_path)
    persist(tmp_path, ["a"], ReplicaOverrides(min_replicas=3, num_cpus=0.5))
    params = read_config(folder).parameters
    assert params["ray.min_replicas"].string_value == "3"
    assert params["ray.num_cpus"].string_value == "0.5"
    assert "ray.max_replicas" not in params  # below the new min: the flag wins
    (after,) = plan(tmp_path)  # no flags this time
    assert after.replicas == ReplicaPlan(min_replicas=3, max_replicas=3, num_cpus=0.5)
    assert after.revision == before.revision
    persist(tmp_path, ["a"], ReplicaOverrides())  # no flags: the file is not rewritten
    assert read_config(folder).parameters == params


def test_ports_inside_rays_worker_range_are_refused() -> None:
    cluster = NodeSettings()
    check_ports({"--grpc-port": 8001, "--port": 6379}, cluster)
    with pytest.raises(ValueError, match=r"--grpc-port 12000 lies in Ray's worker port range"):
        check_ports({"--grpc-port": 12000}, cluster)
    with pytest.raises(ValueError, match=r"--port 10001 is the head's Ray Client port"):
        check_ports({"--port": 10001}, cluster)
    with pytest.raises(ValueError, match=r"--http-port -1: each node's listener needs a fixed"):
        check_ports({"--http-port": -1}, cluster)
    moved = NodeSettings(min_worker_port=20000, max_worker_port=29999)
    check_ports({"--grpc-port": 12000}, moved)
    head = start_command(moved, python="py")
    assert "--min-worker-port=20000" in head and "--max-worker-port=29999" in head
    with pytest.raises(ValueError, match=r"--min-worker-port 20000 > --max-worker-port 19999"):
        NodeSettings(min_worker_port=20000)
    env = node_env(NodeSettings(worker_niceness=5, node_ip="10.0.0.2", auth_mode="disabled"))
    assert env == {
        "RAY_worker_niceness": "5",
        "RAY_max_direct_call_object_size": str(8 << 20),  # photos inside the actor call
        "CNN_SERVING_RAY_NODE": "10.0.0.2",
        "RAY_AUTH_MODE": "disabled",
    }


def test_adding_a_model_leaves_the_ingress_config_alone_and_the_ingress_finds_it(
    tmp_path: Path,
) -> None:
    """Serve restarts an application when its arguments change: a model added (or
    removed) must change only its own application, and the ingress replicas find the
    model applications the config names from Serve's status (``routes.model_apps``)."""
    pytest.importorskip("ray.serve", reason="the `cluster` extra (ray[serve]) is not installed")
    from ray.serve._private.application_state import ApplicationStatusInfo, StatusOverview
    from ray.serve.schema import ApplicationStatus, ServeDeploySchema

    from server.cluster.app import serve_config
    from server.cluster.routes import model_apps
    from server.settings import Settings

    for name in ("a", "b"):
        _model(tmp_path, name)
    two = serve_config(tmp_path, plan(tmp_path), Settings(), 3)
    _model(tmp_path, "c")
    three = serve_config(tmp_path, plan(tmp_path), Settings(), 3)
    ServeDeploySchema.model_validate(three)
    (ingress, *before), (same, *after) = two["applications"], three["applications"]
    assert same == ingress and "models" not in ingress["args"], ingress
    assert after[:2] == before and [a["name"] for a in after] == ["model-a", "model-b", "model-c"]

    def status(app: str, state: ApplicationStatus) -> bytes:
        info = ApplicationStatusInfo(status=state)
        return StatusOverview(app_status=info, name=app).to_proto().SerializeToString()

    listed = [status(a["name"], ApplicationStatus.RUNNING) for a in three["applications"]]
    listed[-1] = status("model-c", ApplicationStatus.DEPLOYING)  # found while it deploys
    assert model_apps(listed) == {"a": "model-a", "b": "model-b", "c": "model-c"}
    listed[-1] = status("model-c", ApplicationStatus.DELETING)  # removed: no longer routed to
    assert model_apps(listed) == {"a": "model-a", "b": "model-b"}
