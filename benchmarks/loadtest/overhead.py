"""Our server's CPU per request against the transport's floor (issue 28's measure).

    python benchmarks/overhead.py --models lenet5,mobilenet_v2 --clients 1,8 --rounds 2
    python benchmarks/overhead.py --models lenet5 --protocols grpc --profile

Starts ``python -m server`` (devtools/launch.py) on --repository with every model of
--models (each exported there first if missing) and, per model and protocol, a floor
server in a child process of its own: a bare grpc.aio server answering ModelInfer with
the bytes our server answered to the same request, unparsed; a bare aiohttp server
answering POST /v2/models/<model>/infer with our server's body. Closed-loop clients send
a raw FP32 tensor (gRPC ModelInfer with raw_input_contents; HTTP with Triton's binary
tensor extension). Each window reads the server process's utime+stime from
/proc/<pid>/stat (all threads) at both ends: CPU per request = CPU seconds / requests
answered. Rounds interleave ours and floor (A B A B...) so drift on a shared host falls
on both; ours/floor per round is the headline. --profile then runs py-spy (native frames)
on our server under load at the highest client count, outside the measured windows.
Writes overhead.json, overhead.csv, overhead-summary.csv and overhead.md into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common.machine import machine
from benchmarks.common.md_table import fmt
from benchmarks.common.zoo import default_repository
from benchmarks.loadtest.floor import HOPS
from benchmarks.loadtest.profile import profile_server, py_spy, stop_all
from benchmarks.loadtest.targets import Target, prepare
from benchmarks.report import overhead as report

PROTOCOLS = ("grpc", "http")


def _list(text: str, kind: type, flag: str, allowed: tuple[str, ...] = ()) -> list:
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag} {text!r} must be a comma-separated list") from None
    bad = [v for v in values if (v not in allowed if allowed else v <= 0)]
    if not values or bad:
        wanted = f"one or more of {', '.join(allowed)}" if allowed else "numbers > 0"
        raise SystemExit(f"{flag} {text!r}: {bad or 'empty'}; give {wanted}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="lenet5,mobilenet_v2", help="comma-separated")
    p.add_argument("--clients", default="1,8", help="closed-loop clients, comma-separated")
    p.add_argument("--protocols", default="grpc,http", help="grpc, http or both")
    p.add_argument("--seconds", type=float, default=10.0, help="timed window per measurement")
    p.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds before each")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every cell")
    p.add_argument("--repository", type=Path, default=default_repository())
    p.add_argument("--server-args", default="", help="extra flags for our server (one string)")
    p.add_argument(
        "--grpc-floor",
        choices=HOPS,
        default="none",
        help="thread: the gRPC floor answers from a worker thread (a batching server's least)",
    )
    p.add_argument("--profile", action="store_true", help="py-spy --native on our server after")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request deadline (s)")
    p.add_argument("--out", type=Path, default=Path("results") / "overhead")
    a = p.parse_args(argv)
    if a.seconds <= 0 or a.warmup < 0 or a.rounds < 1:
        p.error("--seconds must be > 0, --warmup >= 0 and --rounds >= 1")
    a.model_names = [m.strip() for m in a.models.split(",") if m.strip()]
    if not a.model_names:
        p.error(f"--models {a.models!r} names no model")
    a.client_counts = _list(a.clients, int, "--clients")
    a.protocol_names = _list(a.protocols, str, "--protocols", PROTOCOLS)
    return a


def row(round_: int, target: Target, clients: int, result: dict) -> dict:
    """One measured window as a flat result dict (timm's benchmark.py style)."""
    rps, cpu = result["requests_per_s"], result["server_cpu_pct"]
    lat = result["latency"] or {}
    return {
        "round": round_,
        "model": target.model,
        "protocol": target.protocol,
        "clients": clients,
        "server": target.server,
        "server_kind": target.kind,
        "seconds": result["seconds"],
        "requests": result["requests"],
        "requests_per_s": rps,
        # CPU share (s/s) over requests/s: both over the same window
        "server_cpu_us_per_request": cpu * 1e4 / rps if cpu is not None and rps > 0 else None,
        "server_cpu_pct": cpu,
        "client_cpu_pct": result["client_cpu_pct"],
        "machine_cpu_pct": result.get("machine_cpu_pct"),
        "other_cpu_pct": result.get("other_cpu_pct"),
        "p50_ms": lat.get("p50_ms"),
        "p99_ms": lat.get("p99_ms"),
        "error_count": result["error_count"],
        "errors": result["errors"],
    }


def measure(a: argparse.Namespace, pairs: list[tuple[Target, Target]]) -> list[dict]:
    """Every cell, ours then its floor, round after round."""
    runs = []
    for r in range(1, a.rounds + 1):
        for clients in a.client_counts:
            for pair in pairs:
                for target in pair:
                    runs.append(row(r, target, clients, target.load(clients, a.seconds, a.warmup)))
                    x = runs[-1]
                    print(
                        f"round {r} {x['model']} {x['protocol']} c={clients} {target.kind}: "
                        f"{x['requests_per_s']:,.0f} req/s, "
                        f"{fmt(x['server_cpu_us_per_request'], '.0f')} µs CPU/request",
                        flush=True,
                    )
    return runs


def _profile_into(files: dict, pid: int, seconds: float, prefix: Path) -> None:
    files.update(profile_server(pid, seconds, prefix))


def profile(a: argparse.Namespace, pairs: list[tuple[Target, Target]]) -> list[dict]:
    """py-spy on our server for each model and protocol at the highest client count,
    the load kept up (in short windows) until both recordings are done."""
    clients, seconds = max(a.client_counts), max(a.seconds, 2.0)
    found = []
    for ours, _floor in pairs:
        prefix = a.out / f"profile-{ours.model}-{ours.protocol}-c{clients}"
        files: dict = {}
        spy = threading.Thread(
            target=_profile_into, args=(files, ours.pid, seconds, prefix), daemon=True
        )
        ours.load(clients, 0.5, a.warmup)  # the load is up before sampling starts
        spy.start()
        while spy.is_alive():
            ours.load(clients, 1.0, 0.0)
        print(f"profile {ours.model} {ours.protocol}: {files}", flush=True)
        found.append({"model": ours.model, "protocol": ours.protocol, "clients": clients,
                      "files": {k: v for k, v in files.items() if k != "error"},
                      "error": files.get("error")})  # fmt: skip
    return found


@contextlib.contextmanager
def _sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM becomes Ctrl-C, which asyncio.run turns into a cancellation at an await (an
    exception raised mid-callback can leave aiohttp waiting forever) and anything else into
    KeyboardInterrupt: the stack unwinds and every child is stopped by its pid. SIGINT is
    set first (a shell starts background jobs with it ignored); both restored after."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.profile:
        py_spy()  # missing: say so before any server starts
    started = time.perf_counter()
    with _sigterm_as_sigint(), contextlib.ExitStack() as stack:
        _ours, pairs = prepare(a, stack)
        stack.callback(stop_all)  # runs first: the profiler lets go before servers stop
        pids = ", ".join(f"{t.kind} {t.protocol} {t.model} {t.pid}" for p in pairs for t in p)
        print(f"measuring; server pids: {pids}", flush=True)
        runs = measure(a, pairs)
        profiles = profile(a, pairs) if a.profile else []
    meta = {
        "models": list(dict.fromkeys(ours.model for ours, _ in pairs)),
        "clients": a.client_counts,
        "protocols": a.protocol_names,
        "seconds": a.seconds,
        "warmup": a.warmup,
        "rounds": a.rounds,
        "server_args": a.server_args,
        "repository": str(a.repository),
        "servers": [
            {
                "server": t.server,
                "kind": t.kind,
                "protocol": t.protocol,
                "model": t.model,
                "pid": t.pid,
            }
            for pair in pairs
            for t in pair
        ],  # fmt: skip
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    doc = {
        "meta": meta,
        "summary": report.summarize(runs),
        "http_vs_grpc": report.http_vs_grpc(runs),
        "runs": runs,
        "profiles": profiles,
    }
    paths = report.write(doc, a.out)
    print(report.markdown(doc))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 1 if any(r["error_count"] for r in runs) else 0
