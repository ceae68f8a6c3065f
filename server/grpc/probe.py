"""``python -m server.grpc.probe``: exit 0 only when grpc.health.v1 answers SERVING.

The container HEALTHCHECK (and any exec probe) needs a client for the health
service the server already runs; grpcio-health-checking is a server dependency,
so this avoids shipping a separate grpc_health_probe binary in the image.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    message: str


def tls_credentials(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """For a server started with --tls-cert (and --tls-client-ca: then cert/key too)."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def check(
    address: str,
    service: str = "",
    timeout: float = 3.0,
    tls: grpc.ChannelCredentials | None = None,
) -> ProbeResult:
    """Ask ``address`` for the health of ``service`` ('' is the whole server, else a model)."""
    channel = grpc.insecure_channel(address) if tls is None else grpc.secure_channel(address, tls)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return ProbeResult(False, f"{exc.code().name}: {exc.details()}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return ProbeResult(reply.status == health_pb2.HealthCheckResponse.SERVING, status)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.grpc.probe", description=__doc__)
    p.add_argument("--address", default="127.0.0.1:8001", help="host:port of the gRPC server")
    p.add_argument("--service", default="", help="a model name; default '' = the whole server")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    p.add_argument("--tls-ca", type=Path, help="PEM CA of a TLS server (its --tls-cert)")
    p.add_argument("--tls-cert", type=Path, help="PEM client certificate, for mutual TLS")
    p.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    args = p.parse_args(argv)
    if args.timeout <= 0:
        p.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_ca or args.tls_cert:
        try:
            tls = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        except OSError as exc:
            p.error(f"cannot read a TLS file: {exc}")
    result = check(args.address, args.service, args.timeout, tls)
    target = f"{args.address} service '{args.service}'"
    print(f"{target}: {result.message}", file=sys.stdout if result.healthy else sys.stderr)
    return 0 if result.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
