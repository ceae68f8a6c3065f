"""The server against in-process ONNX Runtime, same model, same threads, one run.

    python benchmarks/serve_vs_inprocess.py --repository /tmp/perf_repo --out /tmp/perf_out
    python benchmarks/serve_vs_inprocess.py --repository /tmp/perf_repo --out /tmp/perf_out \
        --server-args "" --server-args "--max-queue-delay-us 0" --profile

1. Export the model into --repository if it is missing (this may import torch;
   it happens before anything is timed).
2. In process: one ONNX Runtime session (intra_op_num_threads = --threads);
   --sweep-passes interleaved passes over --batch-sizes find the batch size of
   best median throughput (images/s over the timed runs).
3. For each --server-args variant and each of --inputs (tensors in the request
   or in system shared memory, over unary ModelInfer or ModelStreamInfer): start
   ``python -m server`` with the same threads; then --rounds rounds, each
   running, for every --concurrency level, in process / benchmarks/load.py's
   closed loop / in process again (batch 1 around single stream, the best
   batch around the others); stop it with
   SIGTERM.
4. A variant whose server runs another layout than one session of --threads
   (``--instance-count 2 --intra-op-threads 1``) is also compared with that
   layout in process: as many sessions, each in its own thread, swept over
   --batch-sizes once, its best batch sandwiching the highest concurrency too.

Why the sandwiches: on this shared 2-core VM the same ONNX Runtime session
switches between two speeds (batch-1 p50 about 4.1 ms or about 7.2 ms) every
few seconds to minutes, because of the host, not of this machine's processes.
Each server slice is compared with the mean of the in-process slices just
before and after it; a pair whose two in-process slices disagree by more than
15% straddles a switch and is left out. The figures reported are medians over
the stable pairs.

Printed and written to <out>/serve_vs_inprocess.json: in-process batch-1 p50
vs server single-stream p50 (target: at most +1.0 ms), best in-process
throughput vs server throughput at the highest concurrency (target: at least
0.90x), batching efficiency, queue/compute time, client and server CPU, and
the CPU other processes took meanwhile (figures above 10% of a core are
flagged). With --profile the server runs under cProfile (its event-loop
thread) and the top functions are written next to the results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

from benchmarks.common.machine import machine, machine_cpu_seconds
from benchmarks.comparison.compare import NOISY_PCT, report, summarize_variant
from benchmarks.comparison.session import (
    InProcess,
    ensure_exported,
    inproc_line,
    input_shape,
    instance_count,
    sweep,
)
from benchmarks.loadtest import cli as load
from benchmarks.loadtest.infer_requests import shared_memory_request
from devtools.launch import Launched, launch

ROOT = Path(__file__).resolve().parents[2]


def other_cpu_pct(seconds: float = 2.0) -> float | None:
    """CPU (% of one core) that processes other than this one took over ``seconds``."""
    own0, all0 = time.process_time(), machine_cpu_seconds()
    t0 = time.perf_counter()
    time.sleep(seconds)
    own1, all1 = time.process_time(), machine_cpu_seconds()
    if all0 is None or all1 is None:
        return None
    return 100 * ((all1 - all0) - (own1 - own0)) / (time.perf_counter() - t0)


def wait_quiet(timeout: float, threshold: float = NOISY_PCT) -> float | None:
    """Wait (up to ``timeout`` s) until other processes leave the CPU; their last share."""
    deadline = time.monotonic() + timeout
    other = other_cpu_pct()
    while other is not None and other > threshold and time.monotonic() < deadline:
        print(f"  waiting: other processes use {other:.0f}% of a core", flush=True)
        other = other_cpu_pct(5.0)
    return other


def _server_line(row: dict) -> str:
    srv = row["server"] or {}
    lat = row["latency"] or {}
    return (
        f"server c={row['concurrency']:<2} p50 {lat.get('p50_ms', 0):7.2f} ms"
        f" {row['throughput']:6.1f} img/s  errors {row['error_count']}"
        f"  batch eff. {srv.get('batching_efficiency') or 0:.2f}"
        f"  queue {srv.get('queue_ms_mean') or 0:.2f} ms"
        f"  compute {srv.get('compute_ms_mean') or 0:.2f} ms"
        f"  server e2e {srv.get('request_ms_mean') or 0:.2f} ms"
        f"  CPU client {row['client_cpu_pct']:.0f}%"
        f" server {row['server_cpu_pct'] or 0:.0f}%"
        f" others {row.get('other_cpu_pct') or 0:.0f}%"
    )


# --- the server ---------------------------------------------------------------


def split_variant(text: str) -> tuple[dict[str, str], list[str]]:
    """``"MALLOC_ARENA_MAX=2 --max-queue-delay-us 0"`` -> ({env}, [server flags]).

    Leading NAME=VALUE words set the server's environment, as in a shell.
    """
    words = shlex.split(text)
    env: dict[str, str] = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        name, value = words.pop(0).split("=", 1)
        if not name.isidentifier():
            raise SystemExit(f"--server-args: {name!r} is not an environment variable name")
        env[name] = value
    return env, words


def layout_of(flags: list[str], instances: int, threads: int) -> tuple[int, int]:
    """(model instances, intra-op threads each) a server started with ``flags`` runs:
    its ``--instance-count``/``--intra-op-threads`` where given, else the defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--instance-count", type=int, default=instances)
    parser.add_argument("--intra-op-threads", type=int, default=threads)
    known, _ = parser.parse_known_args(flags)
    return known.instance_count, known.intra_op_threads


def start_server(
    repository: Path,
    model: str,
    threads: int,
    extra: list[str],
    log: Path,
    profile: Path | None = None,
    timeout: float = 180,
    env: dict[str, str] | None = None,
) -> Launched:
    """``python -m server`` for ``model`` on OS-picked localhost ports, once ready.

    ``extra`` flags come last, so they override ours (``--model-repository`` too).
    """
    python = [sys.executable]
    if profile is not None:
        python += ["-m", "cProfile", "-o", str(profile)]
    return launch(
        repository, "--model", model, "--intra-op-threads", str(threads), *extra,
        log=log, python=python, cwd=ROOT, env=env, timeout=timeout,
    )  # fmt: skip


def profile_top(prof: Path, out: Path, lines: int = 40) -> str:
    """The server's cProfile, by own time and by cumulative time, as text."""
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    stats.strip_dirs().sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)
    out.write_text(buf.getvalue())
    return buf.getvalue()


MODES = ("raw", "shm", "stream-raw", "stream-shm")


def run_variant(
    args: argparse.Namespace,
    index: int,
    variant: str,
    inproc: InProcess,
    best: int,
    mode: str = "raw",
    own_layout: tuple[InProcess, int] | None = None,
) -> dict:
    """Start one server; rounds of [in-process, server level, in-process] per level.

    ``mode``: "raw" sends the tensor in each request; "shm" passes it through system
    shared memory (Triton's extension), as a client on the same host would; the
    "stream-" forms send the same requests over ModelStreamInfer, one stream per client.
    ``own_layout``: the server's instances x threads in process, at its best batch, which
    then also sandwiches the highest concurrency (``layout_before``/``layout_after``).
    """
    env, extra = split_variant(variant)
    tag = f"{index}-{mode}"
    profile = args.out / f"server-{tag}.prof" if args.profile else None
    server = start_server(
        args.repository,
        args.model,
        args.threads,
        extra,
        args.out / f"server-{tag}.log",
        profile,
        env=env,
    )

    def reference(batch: int, session: InProcess = inproc) -> dict:
        row = session.measure(batch, args.inproc_seconds)
        print("    " + inproc_line(row), flush=True)
        return row

    rounds: list[dict[int, dict]] = []
    try:
        info = load.model_info(server.url, args.model)
        with contextlib.ExitStack() as stack:
            if mode.endswith("shm"):
                request = stack.enter_context(shared_memory_request(server.url, info, 1))
            else:
                request = load.tensor_request(info, 1)
            load.check_request(server.url, request)
            for r in range(args.rounds):
                print(f"  round {r + 1}/{args.rounds} ({mode} inputs)", flush=True)
                levels: dict[int, dict] = {}
                for n in args.concurrency:
                    batch = 1 if n == 1 else best  # single stream vs batch 1, else vs the best
                    before = reference(batch)
                    own = own_layout if n == max(args.concurrency) and n > 1 else None
                    own_before = reference(own[1], own[0]) if own else None
                    row = load.run_closed_loop(
                        server.url,
                        request,
                        n,
                        args.seconds,
                        args.warmup,
                        metrics_url=server.metrics_url,
                        model=args.model,
                        server_pid=server.proc.pid,
                        shared_channel=args.shared_channel,
                        streaming=mode.startswith("stream"),
                    )
                    print("    " + _server_line(row), flush=True)
                    levels[n] = {"server": row, "before": before}
                    if own:
                        levels[n]["layout_before"] = own_before
                        levels[n]["layout_after"] = reference(own[1], own[0])
                    levels[n]["after"] = reference(batch)
                rounds.append(levels)
    finally:
        rc = server.terminate()
    result = {
        "server_args": variant,
        "inputs": mode,
        "env": env,
        "exit_code": rc,
        "best_batch": best,
        "rounds": [{str(n): level for n, level in levels.items()} for levels in rounds],
    }
    result["summary"] = summarize_variant(variant, rounds, best)
    result["summary"]["inputs"] = mode
    if own_layout is not None and "own_layout" in result["summary"]:
        result["summary"]["own_layout"]["name"] = own_layout[0].layout
        result["summary"]["own_layout"]["best_batch"] = own_layout[1]
    if profile is not None and profile.is_file():
        result["profile"] = str(profile)
        profile_top(profile, args.out / f"server-{tag}.profile.txt")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-sizes", default="1,2,4,8,16", help="in-process batch sizes")
    p.add_argument("--inproc-seconds", type=float, default=1.5, help="per in-process slice")
    p.add_argument("--sweep-passes", type=int, default=3, help="passes over --batch-sizes")
    p.add_argument("--concurrency", default="1,8", help="server closed-loop levels")
    p.add_argument("--rounds", type=int, default=6, help="paired rounds per server variant")
    p.add_argument("--seconds", type=float, default=2.0, help="per server level and round")
    p.add_argument("--warmup", type=float, default=0.5, help="uncounted seconds before each")
    p.add_argument(
        "--server-args",
        action="append",
        default=None,
        help='extra server flags, e.g. "--max-queue-delay-us 0", after optional NAME=VALUE\n'
        "environment settings; repeat for several variants (each its own server)",
    )
    p.add_argument("--shared-channel", action="store_true", help="one gRPC channel for all")
    p.add_argument(
        "--inputs",
        default="raw,shm",
        help="how requests carry the tensor, each its own server: raw (in the message),\n"
        "shm (system shared memory, Triton's extension), and the same over ModelStreamInfer:\n"
        f"{', '.join(MODES)}",
    )
    p.add_argument("--profile", action="store_true", help="run the server under cProfile")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="before each phase, wait up to this many seconds for other processes to\n"
        f"leave the CPU (below {NOISY_PCT:.0f}%% of a core); 0: do not wait",
    )
    p.add_argument("--out", type=Path, default=Path("results"))
    a = p.parse_args(argv)
    a.batch_sizes = load._numbers(a.batch_sizes, int, "--batch-sizes")
    a.concurrency = load._numbers(a.concurrency, int, "--concurrency")
    if a.rounds < 1 or a.sweep_passes < 1:
        p.error("--rounds and --sweep-passes must be >= 1")
    if 1 not in a.batch_sizes:
        a.batch_sizes = [1, *a.batch_sizes]
    a.variants = a.server_args or [""]
    a.inputs = [m.strip() for m in a.inputs.split(",") if m.strip()]
    if not a.inputs or set(a.inputs) - set(MODES):
        p.error(f"--inputs {a.inputs}: choose from {', '.join(MODES)}")
    for variant in a.variants:  # fail on a bad one now, not after minutes of timing
        instances, threads = layout_of(split_variant(variant)[1], 1, a.threads)
        if instances < 1 or threads < 1:
            p.error(
                f"--server-args {variant!r}: --instance-count {instances} and "
                f"--intra-op-threads {threads} must both be >= 1"
            )
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = ensure_exported(args.repository, args.model)  # before any timing
    shape = input_shape(args.repository, args.model)
    meta = {**machine(), "load_average": os.getloadavg(), "argv": sys.argv[1:]}
    print(f"machine: {meta}\n{args.model} {shape}, {args.threads} threads", flush=True)
    inproc = InProcess(onnx_path, shape, args.threads)
    print("in process, batch sweep:", flush=True)
    wait_quiet(args.quiet_wait)
    rows, best = sweep(inproc, args.batch_sizes, args.sweep_passes, args.inproc_seconds)
    default_instances = instance_count(args.repository, args.model)
    layouts: dict[tuple[int, int], tuple[InProcess, int]] = {}  # the servers' own, swept once
    sweeps = {inproc.layout: rows}
    variants = []
    for i, variant in enumerate(args.variants):
        layout = layout_of(split_variant(variant)[1], default_instances, args.threads)
        if layout != (1, args.threads) and layout not in layouts:
            print(f"in process as the server runs it ({layout[0]}x{layout[1]}):", flush=True)
            wait_quiet(args.quiet_wait)
            own = InProcess(onnx_path, shape, layout[1], sessions=layout[0])
            own_rows, own_best = sweep(
                own, args.batch_sizes, args.sweep_passes, args.inproc_seconds
            )
            layouts[layout], sweeps[own.layout] = (own, own_best), own_rows
        for mode in args.inputs:
            print(f"server {i}: {variant or '(defaults)'}, {mode} inputs", flush=True)
            wait_quiet(args.quiet_wait)
            variants.append(
                run_variant(args, i, variant, inproc, best, mode, own_layout=layouts.get(layout))
            )
    for own, _ in layouts.values():
        own.close()
    inproc.close()
    for v in variants:
        report(v["summary"])
    meta["load_average_end"] = os.getloadavg()
    result = {
        "machine": meta,
        "model": args.model,
        "threads": args.threads,
        "inprocess_sweep": rows,
        "inprocess_sweeps": sweeps,  # per layout (sessions x threads), the servers' own too
        "variants": variants,
        "summary": [v["summary"] for v in variants],
    }
    path = args.out / "serve_vs_inprocess.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")
    return 0 if all(v["exit_code"] == 0 for v in variants) else 1
