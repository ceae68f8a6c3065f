"""``ray start`` and stop for this service's nodes: used by the CLI and the tests.

On a multi-node cluster the head should run no model replicas (``--num-cpus 0``):
only Ray's control plane (GCS), Serve's controller and an ingress replica
(the node's gRPC listener); workers bring the CPUs. Every node carries the ingress
resource, so ``deploy`` puts an ingress replica, listening on port 8001, on every node.
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

from server.cluster import auth, processes
from server.cluster.settings import INGRESS_RESOURCE
from server.settings.cluster import NodeSettings

MiB = 1 << 20
# Requests up to this size travel inside the actor call to a model replica instead of
# through the object store (Ray's default: 100 KiB, less than most photos): one copy
# fewer and no raylet work per request. Ray caps a call's inlined bytes at 10 MiB.
INLINE_ARGS_BYTES = 8 * MiB


def check_ports(ports: dict[str, int], node: NodeSettings) -> None:
    """Refuse a listener port Ray may hand to one of its own processes first."""
    low, high = node.min_worker_port, node.max_worker_port
    for flag, port in ports.items():
        if port <= 0:
            raise ValueError(f"{flag} {port}: each node's listener needs a fixed port (1-65535)")
        if low <= port <= high:
            raise ValueError(
                f"{flag} {port} lies in Ray's worker port range {low}-{high}: a Ray worker "
                f"may take it first; choose a port outside it (or move the range with "
                f"--min-worker-port/--max-worker-port)"
            )
        if port == node.client_server_port:
            raise ValueError(f"{flag} {port} is the head's Ray Client port; choose another")


def start_command(
    node: NodeSettings, block: bool = False, python: str = sys.executable
) -> list[str]:
    """The ``ray start`` command line for one node (``block``: stay in the foreground, for
    tests and containers)."""
    cmd = [python, "-m", "ray.scripts.scripts", "start"]
    if node.is_head:
        cmd += ["--head", f"--port={node.port}", "--include-dashboard=false"]
        cmd.append(f"--ray-client-server-port={node.client_server_port}")
    else:
        cmd += [f"--address={node.address}"]
    cmd += [f"--min-worker-port={node.min_worker_port}"]
    cmd += [f"--max-worker-port={node.max_worker_port}"]
    if node.num_cpus is not None:
        cmd.append(f"--num-cpus={node.num_cpus}")
    if node.node_ip:
        cmd.append(f"--node-ip-address={node.node_ip}")
    cmd.append(f"--object-store-memory={node.object_store_mb * MiB}")
    if node.ingress:
        cmd.append(f"--resources={json.dumps({INGRESS_RESOURCE: 1000})}")
    cmd.append("--disable-usage-stats")
    if block:
        cmd.append("--block")
    return cmd


def node_env(node: NodeSettings) -> dict[str, str]:
    """Environment for ``ray start``: the raylet reads ``RAY_worker_niceness`` (Ray's
    default 15) and applies it to every worker it starts, which also inherit the inline
    size; the mark names the node's processes for ``down --stop-node``; the auth
    variables carry the token."""
    return {
        "RAY_worker_niceness": str(node.worker_niceness),
        "RAY_max_direct_call_object_size": str(INLINE_ARGS_BYTES),
        **processes.mark(node.node_ip),
        **auth.auth_env(node),
    }


def start_node(node: NodeSettings) -> None:
    """Start (or join) and return once the node runs in the background; a new head
    creates the cluster's token when there is none."""
    check_ports({"--port": node.port} if node.is_head else {}, node)
    auth.ensure_token(node, create=node.is_head)
    env = {**os.environ, **node_env(node)}
    subprocess.run(start_command(node), check=True, env=env)
