"""``python -m server --model-repository model_repository``"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from server.app import AppOptions, repository_path, serve
from server.core.images import ImageOptions
from server.core.memory import TrimOptions
from server.core.models import ServerOptions
from server.grpc.transport import TlsFiles
from server.image_args import add_image_arguments, image_options


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def parse_args(argv: list[str] | None = None) -> AppOptions:
    p = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    p.add_argument("--model-repository", required=True, type=repository_path)
    p.add_argument(
        "--model",
        action="append",
        default=[],
        help="load only this model (repeatable); default: every model",
    )
    for add in (_listeners, _runtime, _batching, _misc, _limits, _tls, add_image_arguments):
        add(p)
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    images = image_options(p, a)
    _check(p, a)
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return _app_options(a, _server_options(a), images)


def _listeners(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument(
        "--http-port", type=int, default=8000, help="KServe v2 HTTP/REST; -1 disables it"
    )
    p.add_argument(
        "--http-cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let browser pages from ORIGIN (or *) call the REST API (repeatable; default: none)",
    )
    p.add_argument("--metrics-port", type=int, default=8002, help="-1 disables /metrics")
    p.add_argument("--metrics-host", default="0.0.0.0", help="127.0.0.1 keeps metrics local")


def _runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-cpu-fallback",
        action="store_true",
        help="run KIND_GPU models on the CPU when no GPU is usable",
    )
    p.add_argument("--intra-op-threads", type=int, default=0)
    p.add_argument(
        "--onnxruntime-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_key_value,
        help="ONNX Runtime session config entry for every model (repeatable), e.g. "
        "session.intra_op.allow_spinning=0",
    )


def _batching(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-batching", action="store_true", help="every request runs alone")
    p.add_argument("--max-batch-size", type=int, default=None)
    p.add_argument("--max-queue-delay-us", type=int, default=None)
    p.add_argument("--preferred-batch-size", type=int, nargs="+", default=None)
    p.add_argument("--max-queue-size", type=int, default=None, help="queued images per model")
    p.add_argument(
        "--max-queue-share",
        type=float,
        default=0.5,
        help="the most of a model's queue one client (connection or stream) may hold, "
        "0 < share <= 1 (default 0.5; at least one batch)",
    )
    p.add_argument(
        "--instance-count",
        type=int,
        default=None,
        help="model instances (batches in flight at once), overriding instance_group",
    )


def _misc(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument(
        "--no-shared-memory",
        action="store_true",
        help="refuse Triton's system shared-memory extension (clients must send tensor bytes)",
    )
    p.add_argument(
        "--max-message-mb",
        type=int,
        default=64,
        help="largest gRPC message received or sent, MiB (default 64); larger: RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long accepted requests may take to finish (default 30)",
    )


def _limits(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-spatial-size",
        type=int,
        default=None,
        help="largest dynamic height/width of any model's input (default: the model's "
        "config.pbtxt parameter max_spatial_size, else 4x its crop size)",
    )
    p.add_argument(
        "--malloc-trim-mib",
        type=int,
        default=TrimOptions.slack_mib,
        help="give freed memory back to the OS while RSS is this many MiB over its level "
        f"after loading (default {TrimOptions.slack_mib}; 0: never)",
    )
    p.add_argument(
        "--malloc-arena-max",
        type=int,
        default=TrimOptions.arena_max,
        help=f"glibc malloc arenas (default {TrimOptions.arena_max}; 0: glibc's default)",
    )


def _tls(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-cert", type=Path, help="PEM certificate chain: serve gRPC and HTTP over TLS"
    )
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA: require client certificates it signed (mTLS)"
    )


def _check(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """What argparse's types cannot say: flags that go together, ranges."""
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if a.tls_client_ca and not a.tls_cert:
        p.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if a.instance_count is not None and a.instance_count < 1:
        p.error(f"--instance-count {a.instance_count}: must be >= 1")
    if not 0 < a.max_queue_share <= 1:
        p.error(f"--max-queue-share {a.max_queue_share}: must be in (0, 1]")
    if a.max_spatial_size is not None and a.max_spatial_size < 1:
        p.error(f"--max-spatial-size {a.max_spatial_size}: must be >= 1")
    if a.max_message_mb < 1 or a.grace_seconds < 0:
        p.error("--max-message-mb must be >= 1 and --grace-seconds >= 0")


def _server_options(a: argparse.Namespace) -> ServerOptions:
    return ServerOptions(
        repository=a.model_repository,
        models=tuple(a.model),
        allow_cpu_fallback=a.allow_cpu_fallback,
        intra_op_threads=a.intra_op_threads,
        batching=not a.no_batching,
        serving_overrides=(
            ("max_batch_size", a.max_batch_size),
            ("max_queue_delay_us", a.max_queue_delay_us),
            ("preferred_batch_sizes", tuple(a.preferred_batch_size or ()) or None),
            ("max_queue_size", a.max_queue_size),
            ("instance_count", a.instance_count),
        ),
        max_queue_share=a.max_queue_share,
        warmup=not a.no_warmup,
        onnxruntime_config=tuple(a.onnxruntime_config),
    )


def _app_options(a: argparse.Namespace, models: ServerOptions, images: ImageOptions) -> AppOptions:
    return AppOptions(
        models=models,
        host=a.host,
        grpc_port=a.grpc_port,
        http_port=a.http_port,
        http_cors_origins=tuple(a.http_cors_origin),
        metrics_port=a.metrics_port,
        metrics_host=a.metrics_host,
        max_message_bytes=a.max_message_mb << 20,
        grace_seconds=a.grace_seconds,
        tls=TlsFiles(a.tls_cert, a.tls_key, a.tls_client_ca) if a.tls_cert else None,
        shared_memory=not a.no_shared_memory,
        images=images,
        max_spatial_size=a.max_spatial_size,
        memory=TrimOptions(slack_mib=a.malloc_trim_mib, arena_max=a.malloc_arena_max),
    )


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
