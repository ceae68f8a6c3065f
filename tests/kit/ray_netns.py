"""A real multi-node Ray cluster on one machine: each node in its own network namespace.

Namespaces are joined by a bridge in the root namespace (which also reaches
them, so the test process is a client on the "LAN"). Each node is one
``ray start --block`` with its own HOME and RAY_TMPDIR; stopping a node kills
every process in its namespace by pid (``ip netns pids``), never by name,
and ``close()`` deletes every namespace, link and the bridge, also after a
failure (call it from a fixture finalizer). Ray's token authentication is on, as
``up`` starts it: every node and client reads one token file under the cluster's home.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.cluster.auth import ensure_token
from server.cluster.nodes import node_env, start_command
from server.settings.cluster import NodeSettings

ROOT = Path(__file__).resolve().parents[2]
GCS_PORT = 6379


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def netns_available() -> str:
    """ "" when network namespaces can be made here, else why not."""
    probe = f"k16probe{os.getpid() % 100000}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "the `ip` command is missing (iproute2)"
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


@dataclass
class Node:
    name: str
    netns: str
    ip: str
    options: NodeSettings
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. RAY_REDIS_ADDRESS


@dataclass
class NetnsCluster:
    """Head + workers on a bridge; ``tag`` keeps names unique per run (15-char limit)."""

    workdir: Path
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="k16-", dir="/tmp")))
    tag: str = field(default_factory=lambda: f"{os.getpid() % 0x10000:04x}")
    subnet: int = field(default_factory=lambda: 100 + os.getpid() % 150)
    nodes: dict[str, Node] = field(default_factory=dict)
    _links: list[str] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"k16b{self.tag}"

    def create_bridge(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        _ip("addr", "add", f"10.216.{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_namespace(self, index: int) -> tuple[str, str]:
        netns, veth = f"k16n{self.tag}{index}", f"k16v{self.tag}{index}"
        _ip("netns", "add", netns)
        self._namespaces.append(netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self._links.append(veth)
        _ip("link", "set", veth, "master", self.bridge, "up")
        address = f"10.216.{self.subnet}.{10 + index}"
        for args in (
            ("addr", "add", f"{address}/24", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("-n", netns, *args)
        return netns, address

    @property
    def token(self) -> Path:
        """The cluster's Ray token file (made with the head)."""
        return self.home / "auth_token"

    def head_address(self) -> str:
        return f"{self.nodes['head'].ip}:{GCS_PORT}"

    def env(self, node: str) -> dict[str, str]:
        # Under a short /tmp path: Ray's sockets live below RAY_TMPDIR, and a Unix
        # socket path may not exceed 107 bytes (pytest's tmp_path is too deep).
        home = self.home / node
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        drop = ("RAY_", "PYTEST_", "COV", "CNN_SERVING_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        options = self.nodes[node].options if node in self.nodes else self.settings()
        env.update(
            HOME=str(home),
            RAY_TMPDIR=str(home / "tmp"),
            TMPDIR=str(home / "tmp"),
            PYTHONPATH=str(ROOT),
            RAY_USAGE_STATS_ENABLED="0",
            **node_env(options),
            # `python -m server.cluster` run on this node reads the same token.
            CNN_SERVING_CLUSTER__NODES__AUTH_TOKEN_FILE=str(self.token),
            # Notice a killed node in ~2-3 s instead of the default ~15-30 s.
            RAY_health_check_period_ms="1000",
            RAY_health_check_failure_threshold="3",
            RAY_health_check_timeout_ms="1000",
        )
        if node in self.nodes:
            env.update(self.nodes[node].extra_env)
        return env

    def settings(self, **fields: object) -> NodeSettings:
        """A node's settings with the cluster's token file."""
        return NodeSettings(auth_token_file=self.token, **fields)  # type: ignore[arg-type]

    def add_node(
        self, name: str, index: int, options: NodeSettings, env: dict[str, str] | None = None
    ) -> Node:
        """``options`` without the node's IP (given here) and token file (the cluster's)."""
        netns, ip = self.add_namespace(index)
        options = options.model_copy(update={"node_ip": ip, "auth_token_file": self.token})
        node = Node(name, netns, ip, options, self.workdir / f"{name}.log", extra_env=env or {})
        self.nodes[name] = node
        return node

    def start(self, name: str, timeout: float = 180) -> None:
        """Start the node and return once its raylet registered with the head."""
        node = self.nodes[name]
        node.starts += 1
        node.log = self.workdir / f"{name}-{node.starts}.log"
        ensure_token(node.options, create=True)  # the head's `up` makes it the same way
        cmd = start_command(node.options, block=True, python=sys.executable)
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen(
                ["ip", "netns", "exec", node.netns, *cmd],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(name),
                cwd=ROOT,
            )
        self.wait_for_log(name, "Ray runtime started", timeout)

    def wait_for_log(self, name: str, text: str, timeout: float) -> None:
        node = self.nodes[name]
        deadline = time.monotonic() + timeout
        while text not in node.log.read_text(errors="replace"):
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"node {name} exited:\n{node.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {name}: no {text!r}:\n{node.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def pids(self, name: str) -> list[int]:
        found = _ip("netns", "pids", self.nodes[name].netns, check=False).stdout.split()
        return [int(p) for p in found]

    def kill(self, name: str) -> int:
        """SIGKILL every process of the node (a machine losing power); how many there were."""
        pids = self.pids(name)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node = self.nodes[name]
        if node.proc is not None:
            node.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while self.pids(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(pids)

    def run_in(self, name: str, *args: str, timeout: float = 300) -> str:
        """A command in the node's namespace with the node's environment; its output."""
        node = self.nodes[name]
        done = subprocess.run(
            ["ip", "netns", "exec", node.netns, *args],
            env=self.env(name),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def close(self) -> None:
        """Kill every node's processes, then delete namespaces, links and the bridge."""
        for name in list(self.nodes):
            self.kill(name)
        for netns in reversed(self._namespaces):
            _ip("netns", "del", netns, check=False)
        for link in reversed(self._links):
            _ip("link", "del", link, check=False)
        self._namespaces.clear()
        self._links.clear()
        shutil.rmtree(self.home, ignore_errors=True)
