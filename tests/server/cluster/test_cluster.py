"""The repository served from a real 3-node Ray cluster (head + 2 workers, one netns each).

The head runs no model replicas (``--num-cpus 0``), only the control plane,
the gRPC proxy and the ingress; each worker has one CPU and efficientnet_lite0
asks for two 1-CPU replicas, so they land on different workers and every
request crosses hosts. tritonclient, unmodified, runs in a child process
(see conftest.py) against the head's proxy.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.samples import EXPECTED
from modelrepo.files import read_config, write_config
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.settings.cluster import NodeSettings
from tests.kit import KIT
from tests.kit.cluster_kit import ChildLines, traffic
from tests.kit.cluster_kit import replica_ids as _replica_ids
from tests.kit.cluster_kit import status as _status
from tests.kit.cluster_kit import with_params as _with_params
from tests.kit.fuzz_kit import broken_request, image_element, outcome
from tests.kit.ray_netns import ROOT, NetnsCluster, netns_available
from tests.kit.serving import digits, tensor_request
from tests.kit.stress import flip, image_request, report

pytest.importorskip("ray.serve", reason="the `cluster` extra (ray[serve]) is not installed")

CLIENT = KIT / "cluster_client.py"
LITE0 = "efficientnet_lite0"
GRPC_PORT = 8001
WAIT_S = 300  # generous: a 2x slower host still passes; nothing here waits on a sleep


@pytest.fixture(scope="module")
def cluster_repo(lite0_repo: Path, serve_repo: Path, tmp_path_factory) -> Path:
    """Every model on the cluster's default two replicas: lite0's of one CPU (one per
    1-CPU worker), lenet5's and mobilenet_v2's (for the fuzz) CPU-free."""
    repo = tmp_path_factory.mktemp("cluster-repo")
    shutil.copytree(lite0_repo / LITE0, repo / LITE0)
    _with_params(repo / LITE0 / "config.pbtxt", {"ray.num_cpus": "1"})
    for name in ("lenet5", "mobilenet_v2"):
        shutil.copytree(serve_repo / name, repo / name)
        _with_params(repo / name / "config.pbtxt", {"ray.num_cpus": "0"})
    return repo


@pytest.fixture(scope="module")
def cluster(cluster_repo: Path, tmp_path_factory) -> Iterator[NetnsCluster]:
    why = netns_available()
    if why:
        pytest.skip(f"no network namespaces here ({why}): the multi-node test needs them")
    net = NetnsCluster(tmp_path_factory.mktemp("ray-nodes"))
    try:
        net.create_bridge()
        head = net.add_node("head", 0, NodeSettings(num_cpus=0, object_store_mb=128))
        for i in (1, 2):
            net.add_node(
                f"w{i}",
                i,
                NodeSettings(address=f"{head.ip}:6379", num_cpus=1, object_store_mb=96),
            )
        for name in ("head", "w1", "w2"):  # one after another: parallel starts collide
            net.start(name, timeout=WAIT_S)
        _deploy(net, cluster_repo)
        yield net
    finally:
        net.close()


def _url(net: NetnsCluster, node: str = "head") -> str:
    return f"{net.nodes[node].ip}:{GRPC_PORT}"


def _client(*args: str, timeout: float = WAIT_S) -> dict:
    done = subprocess.run(
        [sys.executable, str(CLIENT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and results, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(results[-1].removeprefix("RESULT "))


def test_tritonclient_classifies_through_the_head_and_both_workers_serve(
    cluster: NetnsCluster, photos: dict[str, Path], tmp_path: Path
) -> None:
    plan = tmp_path / "photos.json"
    plan.write_text(json.dumps({name: str(path) for name, path in photos.items()}))
    seen = _client("classify", _url(cluster), str(plan))
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["metadata"]["name"] == "cnn-serving"
    index = {(m["name"], m.get("state")) for m in seen["index"]["models"]}
    assert index == {(n, "READY") for n in (LITE0, "lenet5", "mobilenet_v2")}, index
    assert seen["config_name"] == LITE0
    (stats,) = seen["statistics"]["model_stats"]  # the one replica that answered
    assert stats["name"] == LITE0 and int(stats.get("inference_count", 0)) > 0, stats
    for name, (top1, label) in seen["labels"].items():
        assert top1 in EXPECTED[name], (name, top1, label)
    workers = {cluster.nodes["w1"].ip, cluster.nodes["w2"].ip}
    assert set(seen["nodes"]) == workers, seen["nodes"]  # the head computes nothing
    errors = seen["errors"]
    assert errors["unknown_model"]["status"] == "StatusCode.NOT_FOUND", errors
    assert "no_such_model" in errors["unknown_model"]["message"]
    assert errors["bad_input"]["status"] == "StatusCode.INVALID_ARGUMENT", errors
    assert "unknown input 'pixels'" in errors["bad_input"]["message"]
    assert errors["bad_version"]["status"] == "StatusCode.NOT_FOUND", errors
    assert errors["load"]["status"] == "StatusCode.UNIMPLEMENTED", errors
    assert "python -m server.cluster deploy" in errors["load"]["message"]
    assert errors["shm"]["status"] == "StatusCode.UNIMPLEMENTED", errors


def test_every_node_is_an_entry_point_with_its_own_ingress(cluster: NetnsCluster) -> None:
    """Each node's port is its own ingress replica, listening there."""
    for node in ("head", "w1", "w2"):
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(_url(cluster, node)))
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=60).live
        for _ in range(5):
            response = stub.ModelInfer(tensor_request("lenet5", digits(1)), timeout=60)
            assert response.parameters["ray_ingress"].string_param == cluster.nodes[node].ip
    stream = stub.ModelStreamInfer(iter([tensor_request("lenet5", digits(1))]), timeout=60)
    code, message = outcome(lambda: list(stream))
    assert code == "UNIMPLEMENTED" and "send ModelInfer" in message, (code, message)


def test_each_replica_serves_the_single_servers_metrics(
    cluster: NetnsCluster, tmp_path: Path
) -> None:
    targets = tmp_path / "targets.json"
    status = _status(cluster, f"--file-sd={targets}")
    replicas = status["replicas"]
    lite0 = [r for r in replicas if r["model"] == LITE0]
    assert {r["node"] for r in lite0} == {cluster.nodes["w1"].ip, cluster.nodes["w2"].ip}, status
    # The niceness `up` chose (ClusterSettings.worker_niceness), not Ray's default 15.
    assert {r["nice"] for r in replicas} == {0}, replicas
    scraped = {
        (t["targets"][0], t["labels"]["deployment"]) for t in json.loads(targets.read_text())
    }
    assert scraped == {(r["metrics"].split("/")[2], r["model"]) for r in replicas}, scraped
    nodes = {node.ip for node in cluster.nodes.values()}
    assert status["listeners"] == dict.fromkeys(nodes, "RUNNING"), status  # one on every node
    ingress = status["applications"]["kserve"]["deployments"]["kserve"]["replicas"]
    assert sorted(r["node_ip"] for r in ingress) == sorted(nodes), ingress  # one beside each
    # HA by default: lenet5's config names no count, so it runs the cluster's 2, spread.
    lenet = status["applications"]["model-lenet5"]["deployments"]["lenet5"]["replicas"]
    assert len({r["node_ip"] for r in lenet if r["state"] == "RUNNING"}) == 2, lenet
    served = 0
    for replica in lite0:
        with urllib.request.urlopen(replica["metrics"], timeout=30) as response:
            text = response.read().decode()
        found = re.search(rf'inference_requests_total{{(?=[^}}]*model="{LITE0}")'
                          rf'(?=[^}}]*code="OK")[^}}]*}} (\S+)', text)  # fmt: skip
        assert found, text[:2000]
        served += int(float(found.group(1)))
    assert served > 0


# --- the protocol fuzz (tests/kit/fuzz_kit.py's strategies) through the cluster ------------
CLUSTER_FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def stub(cluster: NetnsCluster) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(_url(cluster)))


@CLUSTER_FUZZ
@given(case=broken_request())
def test_malformed_tensor_requests_through_the_cluster(stub, case) -> None:
    req, codes, words = case
    code, message = outcome(lambda: stub.ModelInfer(req, timeout=60))
    assert code in codes, (code, message, codes)
    assert any(w in message for w in words), (message, words)


@CLUSTER_FUZZ
@given(elements=st.lists(image_element(), min_size=1, max_size=3))
def test_malformed_images_through_the_cluster(stub, elements) -> None:
    req = image_request([e for e, _ in elements], None, False)
    code, message = outcome(lambda: stub.ModelInfer(req, timeout=60))
    if any(bad for _, bad in elements):
        assert code == "INVALID_ARGUMENT", (code, message)
    assert code in {"OK", "INVALID_ARGUMENT"}, (code, message)


@CLUSTER_FUZZ
@given(body=st.binary(max_size=3000) | st.lists(st.integers(0, 10**6), min_size=1, max_size=6))
def test_bytes_that_are_not_a_request_through_the_cluster(cluster: NetnsCluster, body) -> None:
    if isinstance(body, list):
        body = flip(tensor_request("lenet5", digits(1)).SerializeToString(), body)
    channel = grpc.insecure_channel(_url(cluster))
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    code, message = outcome(lambda: call(body, timeout=60))
    channel.close()
    assert code not in {"INTERNAL", "UNKNOWN"}, (code, message)


# --- last: a node killed and rejoined (the cluster is not the same afterwards) ----
def _traffic(net: NetnsCluster, photo: Path, node: str = "head") -> ContextManager[ChildLines]:
    """tritonclient sending the photo on two threads through ``node``'s port."""
    return traffic(_url(net, node), photo)


def _deploy(net: NetnsCluster, repo: Path, *extra: str) -> None:
    net.run_in(
        "head",
        sys.executable,
        "-m",
        "server.cluster",
        "deploy",
        f"--address={net.head_address()}",
        f"--model-repository={repo}",
        f"--grpc-port={GRPC_PORT}",
        *extra,
        timeout=WAIT_S,
    )


def test_a_new_version_rolls_out_replica_by_replica_without_failures(
    cluster: NetnsCluster, cluster_repo: Path, photos: dict[str, Path], request
) -> None:
    w1, w2 = cluster.nodes["w1"].ip, cluster.nodes["w2"].ip
    unchanged = [("kserve", "kserve"), ("model-lenet5", "lenet5")]
    unchanged.append(("model-mobilenet_v2", "mobilenet_v2"))
    before = _status(cluster)
    shutil.copytree(cluster_repo / LITE0 / "1", cluster_repo / LITE0 / "2")  # a new export
    with _traffic(cluster, photos["coffee.png"]) as lines:
        lines.wait_for(f"seen start {w1}", f"seen start {w2}", "version start 1")
        lines.send("phase rolling")
        _deploy(cluster, cluster_repo)  # returns once both replicas run version 2
        lines.send("phase rolled")
        lines.wait_for(f"seen rolled {w1}", f"seen rolled {w2}", "version rolled 2")
    counts = lines.result["counts"]
    report(request.config, f"\ncluster rolling update: {counts}, {lines.result['versions']}")
    assert all(set(c) == {"OK"} for c in counts.values()), (counts, lines.result["messages"])
    after = _status(cluster)
    for app, deployment in unchanged:  # not restarted: the same replicas still run
        assert _replica_ids(after, app, deployment) == _replica_ids(before, app, deployment)
    rolled = _replica_ids(after, f"model-{LITE0}", LITE0)
    assert len(rolled) == 2 and not rolled & _replica_ids(before, f"model-{LITE0}", LITE0)


def test_adding_and_removing_a_model_leaves_the_ingress_and_the_other_models_running(
    cluster: NetnsCluster, cluster_repo: Path
) -> None:
    """The ingress's arguments name no models: a model added answers through the head's
    port, one removed answers as unknown, and no ingress (listener) or other model restarts."""
    added, folder = "lenet5_added", cluster_repo / "lenet5_added"
    kept = [("kserve", "kserve"), ("model-lenet5", "lenet5"), (f"model-{LITE0}", LITE0)]
    kept.append(("model-mobilenet_v2", "mobilenet_v2"))
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(_url(cluster)))

    def infer() -> pb.ModelInferResponse:
        return stub.ModelInfer(tensor_request(added, digits(1)), timeout=60)

    def listed() -> set[str]:
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=WAIT_S / 2)
        return {m.name for m in index.models}

    before = _status(cluster)
    try:
        shutil.copytree(cluster_repo / "lenet5", folder)
        config = read_config(folder)
        config.name = added
        write_config(folder, config)
        _deploy(cluster, cluster_repo)
        assert infer().model_name == added and added in listed()
        with_it = _status(cluster)
        assert len(_replica_ids(with_it, f"model-{added}", added)) == 2, with_it
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _deploy(cluster, cluster_repo)  # returns once the removed model's application is gone
    code, message = outcome(infer)
    assert (code, message) == ("NOT_FOUND", f"Request for unknown model: '{added}' is not found")
    after = _status(cluster)
    assert added not in listed() and f"model-{added}" not in after["applications"], after
    for app, deployment in kept:  # not restarted by either deploy: the same replicas
        ids = [_replica_ids(s, app, deployment) for s in (before, with_it, after)]
        assert ids[0] == ids[1] == ids[2] and ids[0], (app, ids)


def test_a_request_waiting_for_a_model_that_is_removed_is_answered_not_found(
    cluster: NetnsCluster, cluster_repo: Path
) -> None:
    """A model whose replicas cannot be placed (100 CPUs each) holds a request in Ray's
    router, and shows as UNAVAILABLE in the index (the fan-out timeout, not a hang);
    removing the model answers the request NOT_FOUND at once, not at its deadline."""
    stuck, folder = "lenet5_stuck", cluster_repo / "lenet5_stuck"
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(_url(cluster)))
    try:
        shutil.copytree(cluster_repo / "lenet5", folder)
        config = read_config(folder)
        config.name = stuck
        config.parameters["ray.num_cpus"].string_value = "100"
        write_config(folder, config)
        with pytest.raises(RuntimeError, match=f"cannot place 2 replicas of {stuck}"):
            _deploy(cluster, cluster_repo, "--deploy-timeout-s=20")
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=WAIT_S / 2).models
        row = next(m for m in index if m.name == stuck)  # deploying: the ingress routes to it
        assert row.state == "UNAVAILABLE" and "--proxy-fanout-timeout-s" in row.reason, row
        waiting = stub.ModelInfer.future(tensor_request(stuck, digits(1)), timeout=WAIT_S)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert not waiting.done()  # no replica: held in the router
    _deploy(cluster, cluster_repo)  # returns once the model's application is deleted
    code, message = outcome(lambda: waiting.result(timeout=WAIT_S / 2))
    assert code == "NOT_FOUND", (code, message)
    assert message == f"Request for unknown model: '{stuck}' was removed while the request waited"


def test_a_changed_replica_count_scales_live_and_a_cpu_free_model_may_use_the_head(
    cluster: NetnsCluster, cluster_repo: Path
) -> None:
    """``ray.*`` parameters are not the model's revision: 2 -> 3 lenet5 replicas adds one
    and keeps the two running; lenet5 asks for no CPU, so with one per node the third
    lands on the ``--num-cpus 0`` head."""
    before = _status(cluster)
    config = cluster_repo / "lenet5" / "config.pbtxt"
    original = config.read_text()
    _with_params(config, {"ray.min_replicas": "3"})
    try:
        _deploy(cluster, cluster_repo)
    finally:
        config.write_text(original)
    after = _status(cluster)
    kept, now = (_replica_ids(s, "model-lenet5", "lenet5") for s in (before, after))
    assert len(now) == 3 and kept < now, (kept, now)
    replicas = after["applications"]["model-lenet5"]["deployments"]["lenet5"]["replicas"]
    nodes = {r["node_ip"] for r in replicas if r["state"] == "RUNNING"}
    assert nodes == {node.ip for node in cluster.nodes.values()}, replicas
    revs = {r["revision"] for s in (before, after) for r in s["replicas"] if r["model"] == "lenet5"}
    assert len(revs) == 1, revs


def test_stop_node_stops_only_that_nodes_ray_processes(cluster: NetnsCluster) -> None:
    """Every node runs on this one machine: ``ray stop`` would kill all three."""
    others = {pid for node in ("head", "w1") for pid in cluster.pids(node)}
    assert cluster.pids("w2")
    address = f"--address={cluster.head_address()}"
    down = ("-m", "server.cluster", "down", address, "--stop-node")
    out = cluster.run_in("w2", sys.executable, *down, f"--node-ip={cluster.nodes['w2'].ip}")
    assert "stopped" in out, out
    cluster.nodes["w2"].proc.wait(timeout=WAIT_S)  # its `ray start --block` too
    assert cluster.pids("w2") == [], cluster.pids("w2")
    alive = {pid for node in ("head", "w1") for pid in cluster.pids(node)}
    assert others <= alive, others - alive
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(_url(cluster)))
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=60).ready
    cluster.start("w2", timeout=WAIT_S)  # back for the next test


def test_a_worker_killed_mid_traffic_costs_no_internal_error_and_rejoins(
    cluster: NetnsCluster, photos: dict[str, Path], request: pytest.FixtureRequest
) -> None:
    w1, w2 = cluster.nodes["w1"].ip, cluster.nodes["w2"].ip
    with _traffic(cluster, photos["chelsea.png"]) as lines:
        lines.wait_for(f"seen start {w1}", f"seen start {w2}")
        lines.send("phase killed")
        lines.wait_for("phase killed")
        assert cluster.kill("w2") > 0
        lines.wait_for(f"seen killed {w1}")  # the survivor serves
        cluster.start("w2", timeout=WAIT_S)  # the machine comes back
        lines.send("phase rejoined")
        lines.wait_for(f"seen rejoined {w1}", f"seen rejoined {w2}")
    result = lines.result
    counts = result["counts"]
    report(request.config, f"\ncluster kill -9 of a worker mid-traffic: {counts}")
    for phase, statuses in counts.items():
        allowed = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
        assert set(statuses) <= allowed, (phase, statuses, result["messages"])
    # A request counts in the phase it started in: those in flight at the kill are "start".
    assert set(counts["rejoined"]) == {"OK"}, counts
