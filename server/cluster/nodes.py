"""``ray start`` and stop for this service's nodes: used by the CLI and the tests.

On a multi-node cluster the head should run no model replicas (``--num-cpus 0``):
only Ray's control plane (GCS), Serve's controller, its gRPC proxy and an
ingress replica; workers bring the CPUs. Every node carries the ingress
resource, so ``deploy`` puts an ingress replica beside every node's proxy.
The object store is capped (requests and responses are small) and the
dashboard is off: an idle node then costs well under 1 GB.

Stopping a node never uses ``ray stop``, which kills every process on the
machine whose name looks like Ray's: ``node_env`` marks this node's processes
(``server/cluster/processes.py``) and ``down --stop-node`` stops only those.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from server.cluster import processes
from server.cluster.settings import INGRESS_RESOURCE
from server.settings.cluster import ClusterSettings

MiB = 1 << 20
DEFAULTS = ClusterSettings()


@dataclass(frozen=True)
class NodeOptions:
    head_address: str | None = None  # "HOST:PORT" to join; None: start a head
    port: int = 6379  # the head's GCS port
    node_ip: str | None = None  # the address other nodes reach this one at
    num_cpus: int | None = None  # None: all cores; 0 keeps model replicas off (a head)
    object_store_mb: int = 256
    ingress: bool = True  # carry the ingress resource: an ingress beside this node's proxy
    block: bool = False  # stay in the foreground (tests, containers)

    @property
    def is_head(self) -> bool:
        return self.head_address is None


def check_ports(ports: dict[str, int], cluster: ClusterSettings) -> None:
    """Refuse a listener port Ray may hand to one of its own processes first."""
    low, high = cluster.min_worker_port, cluster.max_worker_port
    if low > high:
        raise ValueError(f"Ray's worker ports: min {low} > max {high}")
    for flag, port in ports.items():
        if low <= port <= high:
            raise ValueError(
                f"{flag} {port} lies in Ray's worker port range {low}-{high}: a Ray worker "
                f"may take it first; choose a port outside it (or move the range with "
                f"--min-worker-port/--max-worker-port)"
            )
        if port == cluster.client_server_port:
            raise ValueError(f"{flag} {port} is the head's Ray Client port; choose another")


def start_command(
    opts: NodeOptions, cluster: ClusterSettings = DEFAULTS, python: str = sys.executable
) -> list[str]:
    """The ``ray start`` command line for one node."""
    cmd = [python, "-m", "ray.scripts.scripts", "start"]
    if opts.is_head:
        cmd += ["--head", f"--port={opts.port}", "--include-dashboard=false"]
        cmd.append(f"--ray-client-server-port={cluster.client_server_port}")
    else:
        cmd += [f"--address={opts.head_address}"]
    cmd += [f"--min-worker-port={cluster.min_worker_port}"]
    cmd += [f"--max-worker-port={cluster.max_worker_port}"]
    if opts.num_cpus is not None:
        cmd.append(f"--num-cpus={opts.num_cpus}")
    if opts.node_ip:
        cmd.append(f"--node-ip-address={opts.node_ip}")
    cmd.append(f"--object-store-memory={opts.object_store_mb * MiB}")
    if opts.ingress:
        cmd.append(f"--resources={json.dumps({INGRESS_RESOURCE: 1000})}")
    cmd.append("--disable-usage-stats")
    if opts.block:
        cmd.append("--block")
    return cmd


def node_env(cluster: ClusterSettings = DEFAULTS, node_ip: str | None = None) -> dict[str, str]:
    """Environment for ``ray start``: the raylet reads ``RAY_worker_niceness`` (Ray's
    default 15) and applies it to every worker it starts; the mark names the node's
    processes for ``down --stop-node``."""
    return {"RAY_worker_niceness": str(cluster.worker_niceness), **processes.mark(node_ip)}


def start_node(opts: NodeOptions, cluster: ClusterSettings = DEFAULTS) -> None:
    """Start (or join) and return once the node runs in the background."""
    ports = {"--port": opts.port} if opts.is_head else {}
    check_ports(ports, cluster)
    env = {**os.environ, **node_env(cluster, opts.node_ip)}
    subprocess.run(start_command(opts, cluster), check=True, env=env)
