"""``python -m server.cluster``: start or join a Ray cluster, deploy a repository, tear down.

python -m server.cluster up --model-repository R            # a head here; deploy submitted
python -m server.cluster up --address HEAD:6379              # join as a worker
python -m server.cluster deploy --address HEAD:6379 --model-repository R
python -m server.cluster status --address HEAD:6379 [--json]
python -m server.cluster down --address HEAD:6379            # delete the applications
python -m server.cluster down --stop-node                    # stop this node's Ray processes
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from server.cluster import processes
from server.cluster.nodes import NodeOptions, check_ports, start_node
from server.cluster.replica import ReplicaSettings
from server.cluster.settings import ReplicaOverrides, persist, plan
from server.settings.cluster import ClusterSettings


def _connect(address: str) -> None:
    import ray  # late: `up --address` joins without importing Ray in this process

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)


def _cluster_settings(args: argparse.Namespace) -> ClusterSettings:
    return ClusterSettings(**{k: getattr(args, k) for k in ClusterSettings.model_fields})


def _deploy(args: argparse.Namespace, address: str, wait: bool) -> None:
    """Plan, persist the flags in config.pbtxt, apply; ``wait``: until every replica runs."""
    from server.cluster import app  # late: imports Ray Serve

    cluster = _cluster_settings(args)
    check_ports({"--grpc-port": args.grpc_port, "--http-port": args.http_port}, cluster)
    repository = Path(args.model_repository)
    overrides = ReplicaOverrides(
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        num_cpus=args.replica_cpus,
    )
    plans = plan(repository, tuple(args.models), overrides, cluster)
    persist(repository, [p.name for p in plans], overrides)
    proxy = app.ProxyOptions(grpc_port=args.grpc_port, http_port=args.http_port)
    _connect(address)
    nodes = app.ingress_nodes()
    config = app.serve_config(
        repository,
        plans,
        ReplicaSettings(intra_op_threads=args.intra_op_threads),
        app.IngressOptions(replicas=args.ingress_replicas),
        proxy,
        nodes,
    )
    if args.serve_config:
        import yaml  # late: only for the file

        Path(args.serve_config).write_text(yaml.safe_dump(config, sort_keys=False))
    app.apply(config, proxy, cluster.deploy_timeout_s if wait else None, nodes)
    for p in plans:
        print(f"deployed {p.name} (revision {p.revision}): {p.replicas}")
    if wait:
        print(f"ready: gRPC on port {args.grpc_port} of {nodes} nodes", flush=True)
    else:
        print("deploy submitted; `status` shows when the replicas run", flush=True)


def _text(value: Any) -> str:
    """An enum's value ("RUNNING"), not its repr ("ApplicationStatus.RUNNING")."""
    return str(getattr(value, "value", value))


def _summary() -> dict[str, Any]:
    """Serve's applications, deployments, replicas and proxies as plain JSON values."""
    from ray.serve.context import _get_global_client  # late: imports Ray Serve

    details = _get_global_client().get_serve_details()
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
    proxies = {
        p.get("node_ip") or node: _text(p["status"])
        for node, p in details.get("proxies", {}).items()
    }
    return {"applications": apps, "proxies": proxies}


def _status(args: argparse.Namespace) -> None:
    from server.cluster.registry import replicas, write_file_sd  # late: imports Ray

    _connect(args.address)
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
    print(f"proxies: {summary['proxies']}")
    for replica in summary["replicas"]:
        print(f"metrics: {replica['model']} on {replica['node']}: {replica['metrics']}")


def _down(args: argparse.Namespace) -> None:
    """Delete the applications; ``--stop-node``: stop this node's own Ray processes (after
    deleting the applications when this node is the head, which ends the cluster)."""
    procs = processes.processes(args.node_ip) if args.stop_node else []
    if args.stop_node and not procs:
        raise FileNotFoundError(
            f"no Ray process of node {args.node_ip or '(no --node-ip)'} runs here "
            f"(none has {processes.MARK}={processes.mark(args.node_ip)[processes.MARK]})"
        )
    if not args.stop_node or processes.is_head(procs):
        import ray  # late
        from ray import serve

        _connect(args.address)
        serve.shutdown()
        ray.shutdown()
    if procs:
        stopped = processes.stop(procs, _cluster_settings(args).stop_grace_s)
        print(f"stopped {stopped} Ray processes of node {args.node_ip or '(default)'}")


def _add_cluster_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per ``ClusterSettings`` field: its default and its docstring as help."""
    for name, field in ClusterSettings.model_fields.items():
        kind = field.annotation if field.annotation in (int, float) else str
        text = (field.description or "").replace("%", "%%")
        parser.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=field.default, help=text
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a head (deploy submitted) or join one (--address)")
    deploy = sub.add_parser("deploy", help="deploy the repository; rolls only changed models")
    for p in (up, deploy):
        p.add_argument("--model-repository", default="model_repository")
        p.add_argument("--models", nargs="*", default=[], help="default: every model")
        p.add_argument("--grpc-port", type=int, default=8001)
        p.add_argument("--http-port", type=int, default=8000)
        p.add_argument("--min-replicas", type=int, help="written to config.pbtxt (ray.*)")
        p.add_argument("--max-replicas", type=int, help="written to config.pbtxt (ray.*)")
        p.add_argument("--target-ongoing-requests", type=float, help="written to config.pbtxt")
        p.add_argument("--replica-cpus", type=float, help="written to config.pbtxt (ray.*)")
        p.add_argument("--intra-op-threads", type=int, default=0)
        p.add_argument(
            "--ingress-replicas", type=int, help="default: one on every node (beside its proxy)"
        )
        p.add_argument("--serve-config", metavar="PATH", help="also write the Serve config")
    up.add_argument("--address", help="HEAD:PORT to join; omitted: start a head here")
    up.add_argument("--port", type=int, default=6379, help="the head's GCS port")
    up.add_argument("--node-ip")
    up.add_argument("--num-cpus", type=int, help="default: all cores; 0 on a multi-node head")
    up.add_argument("--object-store-mb", type=int, default=256)
    up.add_argument("--deploy", action="store_true", help="deploy also after joining")
    deploy.add_argument("--address", default="127.0.0.1:6379")
    for name in ("status", "down"):
        p = sub.add_parser(name)
        p.add_argument("--address", default="127.0.0.1:6379")
    status, down = sub.choices["status"], sub.choices["down"]
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument("--file-sd", metavar="PATH", help="also write Prometheus file_sd targets")
    down.add_argument(
        "--stop-node", action="store_true", help="then stop this node's Ray processes (only)"
    )
    down.add_argument("--node-ip", help="the node's --node-ip given to `up`")
    for p in (up, deploy, down):
        _add_cluster_settings(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            _up(args)
        elif args.command == "deploy":
            _deploy(args, args.address, wait=True)
        elif args.command == "status":
            _status(args)
        else:
            _down(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # DeployError and Ray's own
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _up(args: argparse.Namespace) -> None:
    """Start or join; the head submits the deploy and returns (no worker needed yet)."""
    opts = NodeOptions(
        head_address=args.address,
        port=args.port,
        node_ip=args.node_ip,
        num_cpus=args.num_cpus,
        object_store_mb=args.object_store_mb,
    )
    ports = {"--grpc-port": args.grpc_port, "--http-port": args.http_port}
    check_ports(ports, _cluster_settings(args))  # before anything starts
    start_node(opts, _cluster_settings(args))
    if opts.is_head or args.deploy:
        # "auto": the cluster this machine's node belongs to, whatever its IP.
        _deploy(args, args.address or "auto", wait=not opts.is_head)


if __name__ == "__main__":
    sys.exit(main())
