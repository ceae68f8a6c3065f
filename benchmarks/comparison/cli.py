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
4. Every variant is also compared with a second layout in process (as many
   sessions, each in its own thread, swept over --batch-sizes once, its best
   batch sandwiching the highest concurrency too): the server's own where it
   runs another than one session of --threads (``--instance-count 2
   --intra-op-threads 1``), else one single-thread session per thread. On this
   shared host that layout's speed held within a few % while one session of 2
   threads switched by up to 1.6x (docs/benchmarks/overhead.md, fifth pass).

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
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.common.machine import machine, machine_cpu_seconds
from benchmarks.comparison.compare import NOISY_PCT, report
from benchmarks.comparison.session import (
    InProcess,
    ensure_exported,
    input_shape,
    instance_count,
    sweep,
)
from benchmarks.comparison.variant import layout_of, run_variant, split_variant
from benchmarks.loadtest import cli as load


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


MODES = ("raw", "shm", "stream-raw", "stream-shm")


def reference_layout(layout: tuple[int, int], threads: int) -> tuple[int, int] | None:
    """The second (sessions, threads) a server of ``layout`` is compared with in process:
    its own where it differs from the one-session baseline; else one single-thread
    session per thread (None with one thread: it would be the baseline)."""
    if layout != (1, threads):
        return layout
    return (threads, 1) if threads > 1 else None


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
    layouts: dict[tuple[int, int], tuple[InProcess, int]] = {}  # second layouts, swept once
    sweeps = {inproc.layout: rows}
    variants = []
    for i, variant in enumerate(args.variants):
        layout = layout_of(split_variant(variant)[1], default_instances, args.threads)
        second = reference_layout(layout, args.threads)
        if second is not None and second not in layouts:
            print(f"in process as {second[0]}x{second[1]}:", flush=True)
            wait_quiet(args.quiet_wait)
            other = InProcess(onnx_path, shape, second[1], sessions=second[0])
            other_rows, other_best = sweep(
                other, args.batch_sizes, args.sweep_passes, args.inproc_seconds
            )
            layouts[second], sweeps[other.layout] = (other, other_best), other_rows
        reference = layouts.get(second) if second is not None else None
        for mode in args.inputs:
            print(f"server {i}: {variant or '(defaults)'}, {mode} inputs", flush=True)
            wait_quiet(args.quiet_wait)
            variants.append(
                run_variant(
                    args, i, variant, inproc, best, mode, reference, server_layout=second == layout
                )
            )
    for other, _ in layouts.values():
        other.close()
    inproc.close()
    for v in variants:
        report(v["summary"])
    meta["load_average_end"] = os.getloadavg()
    result = {
        "machine": meta,
        "model": args.model,
        "threads": args.threads,
        "inprocess_sweep": rows,
        "inprocess_sweeps": sweeps,  # per layout (sessions x threads), the second ones too
        "variants": variants,
        "summary": [v["summary"] for v in variants],
    }
    path = args.out / "serve_vs_inprocess.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")
    return 0 if all(v["exit_code"] == 0 for v in variants) else 1
