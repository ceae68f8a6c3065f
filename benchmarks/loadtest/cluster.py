"""The Ray Serve cluster against the single server, in one run (docs/cluster.md figures).

    python -m benchmarks.loadtest.cluster --model efficientnet_lite0 --repository R \\
        --cluster-url HEAD:8001 --cluster-netns head=NS0,w1=NS1,w2=NS2 --seconds 5 --rounds 2

Starts ``python -m server`` on the repository (the single server), then loads
it and the running cluster with the same requests (the bundled photos,
decoded server-side): one client back to back (p50 latency) and 8 clients
(throughput). CPU is read per process from /proc: the single server's
process, and every process in each cluster node's network namespace (a
node's ingress, model replicas and Ray's daemons; the head's controller and GCS), as CPU
milliseconds per request above each group's idle rate (measured first, for
--seconds without traffic), and the cluster ÷ single ratios of each round.
Writes <out>/cluster_load.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common.machine import process_cpu_seconds
from benchmarks.loadtest.infer_requests import image_requests, model_info
from benchmarks.loadtest.loadgen import run_closed_loop
from exporter.samples import photo_paths

LEVELS = (1, 8)


def _netns_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _cpu(groups: dict[str, list[int]]) -> dict[str, float]:
    return {
        name: sum(process_cpu_seconds(pid) or 0.0 for pid in pids) for name, pids in groups.items()
    }


def measure(url: str, model: str, groups: dict[str, list[int]], seconds: float) -> list[dict]:
    """Each level against ``url``, with the CPU each process group spent per request."""
    requests = image_requests(
        model_info(url, model), [p.read_bytes() for p in photo_paths().values()]
    )
    before = _cpu(groups)  # idle: Ray's own background work (heartbeats, metrics, GCS)
    time.sleep(seconds)
    idle = {name: (cpu - before[name]) / seconds for name, cpu in _cpu(groups).items()}
    rows = []
    for n in LEVELS:
        before, started = _cpu(groups), time.monotonic()
        row = run_closed_loop(url, requests, n, seconds, warmup=1.0, timeout=60)
        after, elapsed = _cpu(groups), time.monotonic() - started
        # The counters span the warm-up second too: requests sent then are estimated
        # at the window's rate.
        sent = max(row["requests"], 1) * (seconds + 1.0) / seconds
        busy = {name: after[name] - before[name] - idle[name] * elapsed for name in groups}
        row["cpu_ms_per_request"] = {name: round(1000 * busy[name] / sent, 2) for name in groups}
        row["idle_cpu_pct"] = {name: round(100 * idle[name], 1) for name in groups}
        rows.append(row)
        p50 = (row["latency"] or {}).get("p50_ms")
        print(f"  {url} c={n}: {row['throughput']:.1f} img/s, p50 {p50} ms", flush=True)
    return rows


def ratios(single: list[dict], cluster: list[dict]) -> dict[str, dict[str, float]]:
    """Cluster ÷ single server per level: CPU per request (every node summed), requests/s
    and p50 latency: issue 26's targets are CPU <= 1.5 and 8-client throughput >= 0.7."""
    out = {}
    for one, many in zip(single, cluster, strict=True):
        cpu = sum(many["cpu_ms_per_request"].values()) / one["cpu_ms_per_request"]["server"]
        p50 = [(row["latency"] or {}).get("p50_ms") or 0.0 for row in (one, many)]
        out[f"c{one['concurrency']}"] = {
            "cpu_per_request": round(cpu, 2),
            "throughput": round(many["throughput"] / max(one["throughput"], 1e-9), 2),
            "p50": round(p50[1] / p50[0], 2) if p50[0] else 0.0,
        }
    return out


def _single(repository: Path, model: str, out: Path, seconds: float) -> list[dict]:
    from devtools.launch import launch  # late: only this script starts a server

    server = launch(repository, "--model", model, log=out / "cluster-load-server.log")
    try:
        return measure(server.url, model, {"server": [server.proc.pid]}, seconds)
    finally:
        server.terminate()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--cluster-url", required=True)
    p.add_argument("--cluster-netns", required=True, help="NODE=NETNS,... (head first)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=1, help="single then cluster, this many times")
    p.add_argument("--out", type=Path, default=Path("results"))
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    nodes = dict(item.split("=", 1) for item in a.cluster_netns.split(","))
    rounds = []
    for _ in range(a.rounds):  # interleaved: the host's drift hits both alike
        single = _single(a.repository, a.model, a.out, a.seconds)
        groups = {name: _netns_pids(ns) for name, ns in nodes.items()}
        cluster = measure(a.cluster_url, a.model, groups, a.seconds)
        rounds.append({"single": single, "cluster": cluster, "ratios": ratios(single, cluster)})
        for name, rows in (("single", single), ("cluster", cluster)):
            for row in rows:
                print(name, row["requests"], row["throughput"], row["latency"], row["errors"])
                print("   cpu ms/request", row["cpu_ms_per_request"])
        print("cluster / single:", json.dumps(rounds[-1]["ratios"]), flush=True)
    result = {"rounds": rounds, "seconds": a.seconds, "levels": LEVELS}
    (a.out / "cluster_load.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
