"""``python -m server.cluster``: start or join a Ray cluster, deploy a repository, tear down.

python -m server.cluster up --model-repository R            # a head here, then deploy
python -m server.cluster up --address HEAD:6379              # join as a worker
python -m server.cluster deploy --address HEAD:6379 --model-repository R
python -m server.cluster status --address HEAD:6379
python -m server.cluster down --address HEAD:6379 [--stop-node]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from server.cluster.nodes import NodeOptions, start_node, stop_node
from server.cluster.replica import ReplicaSettings
from server.cluster.settings import APP_NAME, ReplicaOverrides, plan


def _connect(address: str) -> None:
    import ray  # late: `up --address` joins without importing Ray in this process

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)


def _deploy(args: argparse.Namespace, address: str) -> None:
    from server.cluster import app  # late: imports Ray Serve

    plans = plan(
        Path(args.model_repository),
        tuple(args.models),
        ReplicaOverrides(
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            target_ongoing_requests=args.target_ongoing_requests,
            num_cpus=args.replica_cpus,
        ),
    )
    _connect(address)
    app.start(app.ProxyOptions(grpc_port=args.grpc_port, http_port=args.http_port))
    settings = ReplicaSettings(intra_op_threads=args.intra_op_threads)
    ingress = app.IngressOptions(replicas=args.ingress_replicas)
    app.deploy(app.build(Path(args.model_repository), plans, settings, ingress))
    for p in plans:
        print(f"deployed {p.name} (revision {p.revision}): {p.replicas}")
    print(f"ready: gRPC on every node at port {args.grpc_port}", flush=True)


def _status(address: str, file_sd: str | None) -> None:
    from ray import serve  # late: imports Ray Serve

    from server.cluster.registry import replicas, write_file_sd

    _connect(address)
    print(json.dumps(serve.status().applications[APP_NAME].deployments, default=str, indent=1))
    found = replicas()
    for replica in found:
        print(json.dumps(replica))
    if file_sd:
        write_file_sd(Path(file_sd), found)


def _down(address: str, stop: bool) -> None:
    from ray import serve  # late: imports Ray Serve

    _connect(address)
    serve.shutdown()
    if stop:
        stop_node()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a head (then deploy) or join one (--address)")
    deploy = sub.add_parser("deploy", help="deploy (or roll out a new revision of) every model")
    for p in (up, deploy):
        p.add_argument("--model-repository", default="model_repository")
        p.add_argument("--models", nargs="*", default=[], help="default: every model")
        p.add_argument("--grpc-port", type=int, default=8001)
        p.add_argument("--http-port", type=int, default=8000)
        p.add_argument("--min-replicas", type=int)
        p.add_argument("--max-replicas", type=int)
        p.add_argument("--target-ongoing-requests", type=float)
        p.add_argument("--replica-cpus", type=float)
        p.add_argument("--intra-op-threads", type=int, default=0)
        p.add_argument("--ingress-replicas", type=int, default=1)
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
    sub.choices["status"].add_argument(
        "--file-sd", metavar="PATH", help="also write the replicas as Prometheus file_sd targets"
    )
    sub.choices["down"].add_argument(
        "--stop-node", action="store_true", help="then `ray stop` every Ray process here"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "up":
        opts = NodeOptions(
            head_address=args.address,
            port=args.port,
            node_ip=args.node_ip,
            num_cpus=args.num_cpus,
            object_store_mb=args.object_store_mb,
        )
        start_node(opts)
        if opts.is_head or args.deploy:
            # "auto": the cluster this machine's node belongs to, whatever its IP.
            _deploy(args, args.address or "auto")
    elif args.command == "deploy":
        _deploy(args, args.address)
    elif args.command == "status":
        _status(args.address, args.file_sd)
    else:
        _down(args.address, args.stop_node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
