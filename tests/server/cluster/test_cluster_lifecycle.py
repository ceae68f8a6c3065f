"""The cluster's commands as an operator runs them, on a head alone in its own namespace.

``up`` on the head returns once the head runs (no worker has joined, so no model
replica can be placed yet); ``deploy`` then fails within its timeout naming the
replicas it cannot place; ``down --stop-node`` leaves no process of the node
behind. A port inside Ray's worker range is refused before anything starts. Ray's token
authentication is on: ``up`` made the token file (mode 0600), the commands use it, and a
client without it, or with another token, is refused by the GCS. The ingress (CPU-free,
so running on the head alone) answers through the head's proxy: the RPCs the cluster does
not route are UNIMPLEMENTED, a body that is not protobuf INVALID_ARGUMENT. ``down``
deletes the applications.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.settings.cluster import NodeSettings
from tests.kit.fuzz_kit import outcome
from tests.kit.ray_netns import ROOT, NetnsCluster, netns_available

pytest.importorskip("ray.serve", reason="the `cluster` extra (ray[serve]) is not installed")

WAIT_S = 300  # generous: a 2x slower host still passes; nothing here waits on a sleep


@pytest.fixture
def head(tmp_path: Path) -> Iterator[NetnsCluster]:
    why = netns_available()
    if why:
        pytest.skip(f"no network namespaces here ({why})")
    net = NetnsCluster(tmp_path / "nodes")
    (tmp_path / "nodes").mkdir()
    try:
        net.create_bridge()
        net.add_node("head", 0, NodeSettings(num_cpus=0))
        yield net
    finally:
        net.close()  # kills whatever the test left running in the namespace, by pid


def _cli(net: NetnsCluster, log: Path, *args: str) -> tuple[int, str]:
    """``python -m server.cluster ARGS`` in the head's namespace: (exit status, output).

    Output goes to a file: ``ray start`` leaves daemons behind, and a pipe they
    inherited would keep ``subprocess.run`` waiting for them."""
    node = net.nodes["head"]
    with log.open("w") as out:
        done = subprocess.run(
            ["ip", "netns", "exec", node.netns, sys.executable, "-m", "server.cluster", *args],
            env=net.env("head"),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=WAIT_S,
        )
    return done.returncode, log.read_text()


# A Ray driver that says whether the GCS let it in.
PROBE = """
import logging, ray
try:
    ray.init(address="{address}", logging_level=logging.WARNING, log_to_driver=False)
    print("CONNECTED")
except ConnectionError as exc:
    print("REFUSED", exc)
"""


def _probe(net: NetnsCluster, log: Path, **auth: str) -> str:
    """A Ray client in the head's namespace with ``auth`` as its only Ray settings (no token
    file: HOME elsewhere)."""
    env = {k: v for k, v in net.env("head").items() if not k.startswith(("RAY_AUTH", "CNN_"))}
    env.update(HOME=str(log.parent), **auth)
    script = PROBE.format(address=net.head_address())
    with log.open("w") as out:
        subprocess.run(
            ["ip", "netns", "exec", net.nodes["head"].netns, sys.executable, "-c", script],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=WAIT_S,
        )  # fmt: skip
    return log.read_text()


def test_head_up_deploy_timeout_and_stop_node(
    head: NetnsCluster, serve_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(serve_repo / "lenet5", repo / "lenet5")
    ip, address = head.nodes["head"].ip, f"--address={head.head_address()}"
    up = ("up", "--num-cpus=0", f"--node-ip={ip}", f"--model-repository={repo}")
    up += ("--object-store-mb=96",)

    code, out = _cli(head, tmp_path / "refused.log", *up, "--grpc-port=12000")
    assert code == 2 and "--grpc-port 12000 lies in Ray's worker port range" in out, out
    assert head.pids("head") == []  # refused before anything started

    code, out = _cli(head, tmp_path / "up.log", *up)
    assert code == 0 and "deploy submitted" in out, out
    assert head.pids("head")  # the node runs in the background
    assert stat.S_IMODE(head.token.stat().st_mode) == 0o600  # made by the head's `up`

    wrong = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    for name, auth in {"none": {}, "wrong": wrong}.items():
        out = _probe(head, tmp_path / f"probe-{name}.log", **auth)
        assert "REFUSED" in out and "Authentication token is missing or incorrect" in out, out

    code, out = _cli(head, tmp_path / "deploy.log", "deploy", address,
                     f"--model-repository={repo}", "--deploy-timeout-s=40")  # fmt: skip
    assert code == 1, out
    assert "cannot place 2 replicas of lenet5" in out, out  # 1-CPU replicas, a 0-CPU head

    code, out = _cli(head, tmp_path / "status.log", "status", address, "--json")
    assert code == 0, out
    status = json.loads(out[out.index("{\n") :])
    assert set(status["applications"]) == {"kserve", "model-lenet5"}, status
    assert status["applications"]["kserve"]["status"] == "RUNNING", status  # CPU-free

    _ingress_answers(f"{ip}:8001")
    code, out = _cli(head, tmp_path / "delete.log", "down", address)  # the applications only
    assert code == 0, out
    code, out = _cli(head, tmp_path / "status2.log", "status", address, "--json")
    assert code == 0 and json.loads(out[out.index("{\n") :])["applications"] == {}, out
    assert head.pids("head")  # the node still runs

    code, out = _cli(head, tmp_path / "down.log", "down", address, "--stop-node", f"--node-ip={ip}")
    assert code == 0 and "stopped" in out, out
    assert head.pids("head") == []


def _ingress_answers(url: str) -> None:
    """What the ingress answers without any model replica, through the head's proxy."""
    channel = grpc.insecure_channel(url)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=WAIT_S).live
    for name, call in {
        "trace": lambda: stub.TraceSetting(pb.TraceSettingRequest(), timeout=60),
        "log": lambda: stub.LogSettings(pb.LogSettingsRequest(), timeout=60),
    }.items():
        code, message = outcome(call)
        assert code == "UNIMPLEMENTED" and "not supported" in message, (name, code, message)
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    code, message = outcome(lambda: raw(b"\x0a\x05ab", timeout=60))  # a field cut short
    assert code == "INVALID_ARGUMENT", (code, message)
    channel.close()
