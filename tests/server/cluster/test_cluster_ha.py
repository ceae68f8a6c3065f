"""GCS fault tolerance on a real Redis: the head killed while clients use the workers' proxies.

A head, two workers and Debian's ``redis-server`` each in a network namespace;
the head's GCS keeps its state in Redis (``RAY_REDIS_ADDRESS``), as KubeRay's
``gcsFaultToleranceOptions`` sets up. tritonclient sends through a worker's
proxy, which hands requests to the ingress replica on its own node: with the
head gone, requests keep being answered; the head restarts with the same
address and Redis, the cluster is whole again and accepts a deploy.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.settings.cluster import NodeSettings
from tests.kit.cluster_kit import with_params
from tests.kit.ray_netns import NetnsCluster, netns_available
from tests.kit.stress import report
from tests.server.cluster.test_cluster import LITE0, WAIT_S, _deploy, _traffic

pytest.importorskip("ray.serve", reason="the `cluster` extra (ray[serve]) is not installed")
REDIS = shutil.which("redis-server")
# Workers and proxies wait this long for a lost GCS before they give up.
RECONNECT = {"RAY_gcs_rpc_server_reconnect_timeout_s": str(WAIT_S)}


@pytest.fixture(scope="module")
def ha_repo(lite0_repo: Path, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("ha-repo")
    shutil.copytree(lite0_repo / LITE0, repo / LITE0)
    with_params(repo / LITE0 / "config.pbtxt", {"ray.num_cpus": "1"})  # one per worker
    return repo


def _start_redis(net: NetnsCluster, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    netns, ip = net.add_namespace(3)
    log = workdir / "redis.log"
    cmd = ["redis-server", "--bind", ip, "--port", "6379", "--protected-mode", "no"]
    cmd += ["--save", "", "--appendonly", "no", "--dir", str(workdir), "--logfile", str(log)]
    proc = subprocess.Popen(["ip", "netns", "exec", netns, *cmd])
    deadline = time.monotonic() + 60
    while "Ready to accept connections" not in (log.read_text() if log.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, ip


@pytest.fixture(scope="module")
def ha_cluster(ha_repo: Path, tmp_path_factory) -> Iterator[NetnsCluster]:
    why = netns_available()
    if why or REDIS is None:
        pytest.skip(why or "no redis-server (apt-get install redis-server)")
    workdir = tmp_path_factory.mktemp("ray-ha")
    net = NetnsCluster(workdir)
    redis = None
    try:
        net.create_bridge()
        redis, redis_ip = _start_redis(net, workdir)
        head = net.add_node(
            "head",
            0,
            NodeSettings(num_cpus=0, object_store_mb=128),
            {"RAY_REDIS_ADDRESS": f"{redis_ip}:6379", **RECONNECT},
        )
        for i in (1, 2):
            options = NodeSettings(address=f"{head.ip}:6379", num_cpus=1, object_store_mb=96)
            net.add_node(f"w{i}", i, options, RECONNECT)
        for name in ("head", "w1", "w2"):
            net.start(name, timeout=WAIT_S)
        _deploy(net, ha_repo)
        yield net
    finally:
        net.close()
        if redis is not None:
            redis.kill()
            redis.wait()


def test_the_head_killed_during_traffic_through_the_workers(
    ha_cluster: NetnsCluster, ha_repo: Path, photos: dict[str, Path], request
) -> None:
    net = ha_cluster
    w1, w2 = net.nodes["w1"].ip, net.nodes["w2"].ip
    with _traffic(net, photos["chelsea.png"], node="w1") as lines:
        lines.wait_for(f"seen start {w1}", f"seen start {w2}")
        lines.send("phase headless")
        lines.wait_for("phase headless")
        assert net.kill("head") > 0
        lines.wait_for(f"seen headless {w1}", f"seen headless {w2}")  # answered without it
        # A restarted head (a new pod, another machine) has a fresh temp dir: here the old
        # one names the cluster, and Ray would take the workers' --gcs-address (same
        # machine) for a GCS still running at the head's address.
        for stale in (net.home / "head").rglob("ray_current_cluster"):
            stale.unlink()
        net.start("head", timeout=WAIT_S)  # same address, same Redis: the GCS reloads
        lines.send("phase restored")
        lines.wait_for(f"seen restored {w1}", f"seen restored {w2}")
    counts = lines.result["counts"]
    report(request.config, f"\ncluster head killed (GCS on Redis): {counts}")
    for phase, statuses in counts.items():  # only in-flight calls may fail, never INTERNAL
        assert set(statuses) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, (
            phase,
            lines.result["messages"],
        )
    assert counts["headless"].get("OK", 0) > 0 and set(counts["restored"]) == {"OK"}, counts
    assert counts["start"].get("OK", 0) > counts["start"].get("UNAVAILABLE", 0), counts
    _deploy(net, ha_repo)  # the restarted head's controller accepts a deploy
