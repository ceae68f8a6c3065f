"""``python -m server.cluster``: start or join a Ray cluster, deploy a repository, tear down.

python -m server.cluster up --model-repository R            # a head here; deploy submitted
python -m server.cluster up --address HEAD:6379              # join as a worker
python -m server.cluster deploy --address HEAD:6379 --model-repository R
python -m server.cluster status --address HEAD:6379 [--json]
python -m server.cluster serve-config --model-repository R   # the Serve config (KubeRay's
                                                             # serveConfigV2), no cluster
python -m server.cluster up --print-settings                 # the effective settings
python -m server.cluster down --address HEAD:6379            # delete the applications
python -m server.cluster down --stop-node                    # stop this node's Ray processes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from server.cluster import auth, processes
from server.cluster.nodes import check_ports, start_node
from server.cluster.settings import APP_NAME, INGRESS, persist, plan
from server.settings import Settings
from server.settings.cli import CLUSTER, Leaf, add_file_options, add_settings, given
from server.settings.cluster import NodeSettings
from server.settings.sources import load

# The fields of the shared tree the cluster's commands also take, under the flags the
# single server gives them: the proxies' ports and the replicas' ONNX Runtime threads.
SHARED: frozenset[Leaf] = frozenset(
    {("listeners", "grpc_port"), ("listeners", "http_port"), ("models", "intra_op_threads")}
)


def _cluster_leaf(path: Leaf) -> bool:
    return path[0] == CLUSTER or path in SHARED


def _node_leaf(path: Leaf) -> bool:
    return path[:2] == (CLUSTER, "nodes")


def _connect(nodes: NodeSettings, address: str | None = None) -> None:
    """Join the cluster as a client, with its token (before Ray reads its environment)."""
    auth.ensure_token(nodes, create=False)
    os.environ.update(auth.auth_env(nodes))
    import ray  # late: Ray reads RAY_AUTH_* when it starts; `up` joins without it

    ray.init(
        address=address or nodes.connect_address,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )


def _listener_ports(settings: Settings) -> dict[str, int]:
    """The port each node's ingress listens on (Serve's HTTP proxy is not run)."""
    return {"--grpc-port": settings.listeners.grpc_port}


def _write(config: dict[str, Any], path: str | None) -> None:
    import yaml  # late: only for the file

    text = yaml.safe_dump(config, sort_keys=False)
    if path == "-":
        sys.stdout.write(text)
    elif path:
        Path(path).write_text(text)


def _serve_config(args: argparse.Namespace, settings: Settings) -> None:
    """The Serve config ``deploy`` would apply, written without a cluster (KubeRay's
    ``serveConfigV2``): the ingress count is ``--ingress-replicas`` (default 1)."""
    cluster = settings.cluster
    check_ports(_listener_ports(settings), cluster.nodes)
    repository = cluster.deploy.repository
    plans = plan(repository, cluster.deploy.models, cluster.replicas, cluster.deploy)
    from server.cluster import app  # late: imports Ray Serve

    config = app.serve_config(repository, plans, settings, cluster.deploy.ingress_replicas or 1)
    _write(config, args.serve_config or "-")


def _deploy(
    settings: Settings, serve_config: str | None, wait: bool, address: str | None = None
) -> None:
    """Plan, persist the flags in config.pbtxt, apply; ``wait``: until every replica runs."""
    cluster, grpc_port = settings.cluster, settings.listeners.grpc_port
    check_ports(_listener_ports(settings), cluster.nodes)
    repository = cluster.deploy.repository
    plans = plan(repository, cluster.deploy.models, cluster.replicas, cluster.deploy)
    persist(repository, [p.name for p in plans], cluster.replicas)
    _connect(cluster.nodes, address)
    from server.cluster import app  # late: imports Ray Serve, after _connect set Ray's auth

    nodes = app.ingress_nodes()
    config = app.serve_config(repository, plans, settings, nodes)
    _write(config, serve_config)
    app.apply(config, cluster.deploy.timeout_s if wait else None)
    for p in plans:
        print(f"deployed {p.name} (revision {p.revision}): {p.replicas}")
    if wait:
        print(f"ready: gRPC on port {grpc_port} of {nodes} nodes", flush=True)
    else:
        print("deploy submitted; `status` shows when the replicas run", flush=True)


def _text(value: Any) -> str:
    """An enum's value ("RUNNING"), not its repr ("ApplicationStatus.RUNNING")."""
    return str(getattr(value, "value", value))


def _summary() -> dict[str, Any]:
    """Serve's applications, deployments and replicas, and the nodes listening for gRPC,
    as plain JSON values."""
    from ray.serve.context import _get_global_client  # late: imports Ray Serve

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:  # Serve not started, or shut down by `down`: nothing deployed
        return {"applications": {}, "listeners": {}}
    details = client.get_serve_details()
    apps = {}
    for name, found in details.get("applications", {}).items():
        apps[name] = {
            "status": _text(found["status"]),
            "message": found.get("message", ""),
            "deployments": {
                d: {
                    "status": _text(dep["status"]),
                    "message": dep.get("message", ""),
                    "replicas": [
                        {
                            **{k: r.get(k) for k in ("replica_id", "node_ip", "pid")},
                            "state": _text(r.get("state")),
                        }
                        for r in dep.get("replicas", [])
                    ],
                }
                for d, dep in found.get("deployments", {}).items()
            },
        }
    return {"applications": apps, "listeners": _listeners(apps)}


def _listeners(apps: dict[str, Any]) -> dict[str, str]:
    """Node IP -> the state of the ingress replica listening there for gRPC."""
    ingress = apps.get(APP_NAME, {}).get("deployments", {}).get(INGRESS, {})
    return {str(r["node_ip"]): r["state"] for r in ingress.get("replicas", [])}


def _status(args: argparse.Namespace, settings: Settings) -> None:
    _connect(settings.cluster.nodes)
    from server.cluster.registry import replicas, write_file_sd  # late: imports Ray

    summary = {**_summary(), "replicas": replicas()}
    if args.file_sd:
        write_file_sd(Path(args.file_sd), summary["replicas"])
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
        return
    for name, found in summary["applications"].items():
        print(f"{name}: {found['status']} {found['message']}".rstrip())
        for dep, info in found["deployments"].items():
            nodes = sorted(str(r["node_ip"]) for r in info["replicas"])
            print(f"  {dep}: {info['status']}, replicas on {nodes} {info['message']}".rstrip())
    print(f"gRPC listeners (ingress replicas): {summary['listeners']}")
    for replica in summary["replicas"]:
        print(f"metrics: {replica['model']} on {replica['node']}: {replica['metrics']}")


def _down(args: argparse.Namespace, settings: Settings) -> None:
    """Delete the applications; ``--stop-node``: stop this node's own Ray processes (after
    deleting the applications when this node is the head, which ends the cluster)."""
    nodes = settings.cluster.nodes
    procs = processes.processes(nodes.node_ip) if args.stop_node else []
    if args.stop_node and not procs:
        raise FileNotFoundError(
            f"no Ray process of node {nodes.node_ip or '(no --node-ip)'} runs here "
            f"(none has {processes.MARK}={processes.mark(nodes.node_ip)[processes.MARK]})"
        )
    if not args.stop_node or processes.is_head(procs):
        _connect(nodes)
        import ray  # late: after _connect set Ray's auth
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    if procs:
        stopped = processes.stop(procs, nodes.stop_grace_s)
        print(f"stopped {stopped} Ray processes of node {nodes.node_ip or '(default)'}")


def _up(args: argparse.Namespace, settings: Settings) -> None:
    """Start or join; the head submits the deploy and returns (no worker needed yet)."""
    nodes = settings.cluster.nodes
    check_ports(_listener_ports(settings), nodes)  # before anything starts
    start_node(nodes)
    if nodes.is_head or args.deploy:
        # "auto": the cluster this machine's node belongs to, whatever its IP.
        address = nodes.address or "auto"
        _deploy(settings, args.serve_config, wait=not nodes.is_head, address=address)


def _parser() -> argparse.ArgumentParser:
    """Each command's own switches, and the settings tree's cluster flags (with the shared
    ports and threads); ``status`` takes only the node's."""
    parser = argparse.ArgumentParser(prog="python -m server.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a head (deploy submitted) or join one (--address)")
    deploy = sub.add_parser("deploy", help="deploy the repository; rolls only changed models")
    status, down = sub.add_parser("status"), sub.add_parser("down")
    config = sub.add_parser(
        "serve-config", help="write the Serve config deploy applies, without a cluster"
    )
    for p in (up, deploy, config):
        p.add_argument(
            "--serve-config", metavar="PATH", help="(also) write the Serve config; -: stdout"
        )
    up.add_argument("--deploy", action="store_true", help="deploy also after joining")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument("--file-sd", metavar="PATH", help="also write Prometheus file_sd targets")
    down.add_argument(
        "--stop-node", action="store_true", help="then stop this node's Ray processes (only)"
    )
    for p in (up, deploy, status, down, config):
        add_file_options(p)
        add_settings(p, _node_leaf if p is status else _cluster_leaf)
    return parser


COMMANDS = {"up": _up, "status": _status, "down": _down, "serve-config": _serve_config}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        loaded = load(given(args), args.settings)  # flags over CNN_SERVING_* over the file
        if args.print_settings:
            print(loaded.report())
            return 0
        if args.command == "deploy":
            _deploy(loaded.settings, args.serve_config, wait=True)
        else:
            COMMANDS[args.command](args, loaded.settings)
    except (ValueError, FileNotFoundError) as exc:  # SettingsError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # DeployError and Ray's own
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
