"""``ray start`` for this service's nodes: one command line, used by the CLI and the tests.

On a multi-node cluster the head should run no model replicas (``--num-cpus 0``):
only Ray's control plane (GCS), Serve's controller, its gRPC proxy and the
ingress; workers bring the CPUs, and a proxy's traffic then crosses hosts.
The object store is capped (requests and responses are small) and the
dashboard is off: an idle node then costs well under 1 GB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from server.cluster.settings import INGRESS_RESOURCE

MiB = 1 << 20


@dataclass(frozen=True)
class NodeOptions:
    head_address: str | None = None  # "HOST:PORT" to join; None: start a head
    port: int = 6379  # the head's GCS port
    node_ip: str | None = None  # the address other nodes reach this one at
    num_cpus: int | None = None  # None: all cores; 0 keeps model replicas off (a head)
    object_store_mb: int = 256
    ingress: bool | None = None  # host the ingress; None: on the head only
    block: bool = False  # stay in the foreground (tests, containers)

    @property
    def is_head(self) -> bool:
        return self.head_address is None


def start_command(opts: NodeOptions, python: str = sys.executable) -> list[str]:
    """The ``ray start`` command line for one node."""
    cmd = [python, "-m", "ray.scripts.scripts", "start"]
    if opts.is_head:
        cmd += ["--head", f"--port={opts.port}", "--include-dashboard=false"]
    else:
        cmd += [f"--address={opts.head_address}"]
    if opts.num_cpus is not None:
        cmd.append(f"--num-cpus={opts.num_cpus}")
    if opts.node_ip:
        cmd.append(f"--node-ip-address={opts.node_ip}")
    cmd.append(f"--object-store-memory={opts.object_store_mb * MiB}")
    if opts.is_head if opts.ingress is None else opts.ingress:
        cmd.append(f"--resources={json.dumps({INGRESS_RESOURCE: 1000})}")
    cmd.append("--disable-usage-stats")
    if opts.block:
        cmd.append("--block")
    return cmd


def start_node(opts: NodeOptions) -> None:
    """Start (or join) and return once the node runs in the background."""
    subprocess.run(start_command(opts), check=True)


def stop_node() -> None:
    """``ray stop``: every Ray process of this machine (the documented way)."""
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop"], check=True)
