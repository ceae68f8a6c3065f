"""Batching auto-tuner: the best serving configuration for a p99 target, by measurement.

    python benchmarks/tune.py --model mobilenet_v2 --p99-ms 50
    python benchmarks/tune.py --model resnet50 --p99-ms 200 --apply

Searches max_batch_size, preferred batch sizes, the queue delay, instance
count and ONNX Runtime intra-op threads (instances x threads <= cores):

1. ONNX Runtime in process at batch sizes 1..16 (per thread count) prunes the
   space: batches too slow for the target, past the throughput knee, and
   instance/thread splits predicted well below the best are left out;
2. one server is started (devtools.launch) on a scratch copy of the model
   folder; each candidate is written there and reloaded (RepositoryModelLoad);
3. each candidate: a closed-loop concurrency sweep that stops when throughput
   stops improving, then the Server scenario (MLPerf-style): the highest
   Poisson request rate whose p99 meets the target, by bisection;
4. a coordinate climb from the curve's best guess, dimension by dimension;
   the default configuration and the best candidates are measured again;
   candidates within noise of the best are tied and the simplest wins.

Writes <out>/tune-<model>.csv, .json and .png (p99 vs throughput per candidate,
target line). --apply writes the winner into <repository>/<model>/config.pbtxt
(the old file kept as config.pbtxt.bak-<timestamp>) and checks that a server
started on the repository loads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from benchmarks.common.machine import machine
from benchmarks.inprocess.timing import Budget
from benchmarks.loadtest.infer_requests import model_info, tensor_request
from benchmarks.tuning import config as tconfig
from benchmarks.tuning import report
from benchmarks.tuning.candidates import (
    Pruning,
    TargetUnreachable,
    space_from_curve,
)
from benchmarks.tuning.live import (
    LiveProbe,
    Windows,
    apply_and_verify,
    batch_curve,
    machine_cores,
    served_subject,
)
from benchmarks.tuning.measure import MeasurePlan, ProbeMeasure
from benchmarks.tuning.progress import RichProgress
from benchmarks.tuning.search import SearchResult, SearchSettings, search
from devtools.launch import launch
from modelrepo.files import read_config
from modelrepo.serving import ServingConfig, read_serving
from server.settings.security import SecuritySettings


def _ints(text: str, flag: str, p: argparse.ArgumentParser) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        p.error(f"{flag} '{text}' must be comma-separated integers, e.g. 1,2,4,8")
    if not values or min(values) < 1:
        p.error(f"{flag} '{text}' must hold integers >= 1")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="a model folder of --repository")
    p.add_argument("--p99-ms", type=float, required=True, help="the latency target, ms")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--apply", action="store_true", help="write the winner into config.pbtxt")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--budget-minutes", type=float, default=14.0, help="the whole run (default 14)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16", help="in-process curve")
    p.add_argument("--curve-seconds", type=float, default=0.5, help="per curve point")
    p.add_argument("--max-instances", type=int, default=None, help="default: the cores")
    p.add_argument("--concurrency", default="1,2,4,8,16,32", help="closed-loop sweep levels")
    p.add_argument("--seconds", type=float, default=2.0, help="timed window per load level")
    p.add_argument("--max-seconds", type=float, default=6.0, help="longest open-loop window")
    p.add_argument("--warmup", type=float, default=0.5, help="uncounted seconds per level")
    p.add_argument("--rate-steps", type=int, default=5, help="bisection steps over rate")
    p.add_argument("--top-k", type=int, default=3, help="finalists re-measured with the default")
    p.add_argument("--repeats", type=int, default=2, help="trials per finalist")
    p.add_argument("--noise-pct", type=float, default=5.0, help="least difference deemed real")
    p.add_argument("--max-candidates", type=int, default=30)
    a = p.parse_args(argv)
    limits = [  # flag, value, smallest allowed, whether the bound itself is allowed
        ("--p99-ms", a.p99_ms, 0, False),
        ("--budget-minutes", a.budget_minutes, 0, False),
        ("--curve-seconds", a.curve_seconds, 0, False),
        ("--seconds", a.seconds, 0, False),
        ("--max-seconds", a.max_seconds, 0, False),
        ("--warmup", a.warmup, 0, True),
        ("--noise-pct", a.noise_pct, 0, True),
        ("--rate-steps", a.rate_steps, 1, True),
        ("--top-k", a.top_k, 1, True),
        ("--repeats", a.repeats, 1, True),
        ("--max-candidates", a.max_candidates, 2, True),
        ("--max-instances", 1 if a.max_instances is None else a.max_instances, 1, True),
    ]
    for flag, value, low, inclusive in limits:
        if value < low or (value == low and not inclusive):
            p.error(f"{flag} {value}: must be {'>=' if inclusive else '>'} {low}")
    a.batch_sizes = _ints(a.batch_sizes, "--batch-sizes", p)
    a.concurrency = _ints(a.concurrency, "--concurrency", p)
    return a


def _serve_and_search(a, subject, space, default: ServingConfig, progress, deadline: float):

    work = a.out / f"tune-{a.model}-work"
    staged = tconfig.stage(subject.dir, work / "repository")
    log = work / "server.log"
    progress.log(f"starting a server on {staged.parent} (log {log})")
    # explicit model control: each candidate is applied with RepositoryModelLoad
    explicit = SecuritySettings(model_control_mode="explicit")
    server = launch(staged.parent, "--model", a.model, log=log, security=explicit)
    try:
        info = model_info(server.url, a.model)
        windows = Windows(
            seconds=a.seconds,
            warmup=a.warmup,
            max_seconds=max(a.max_seconds, a.seconds),
            timeout=max(1.0, 20 * a.p99_ms / 1e3),
        )
        probe = LiveProbe(
            server.url, server.metrics_url, a.model, staged, [tensor_request(info)], default,
            windows, server.proc.pid,
        )  # fmt: skip
        plan = MeasurePlan(a.p99_ms, a.concurrency, rate_steps=a.rate_steps)
        settings = SearchSettings(
            a.p99_ms,
            budget_s=max(1.0, deadline - time.monotonic()),
            top_k=a.top_k,
            repeats=a.repeats,
            noise_pct=a.noise_pct,
            max_candidates=a.max_candidates,
        )
        measure = ProbeMeasure(probe, plan, progress.point)
        return search(measure, space, default, settings, progress=progress)
    finally:
        code = server.terminate()
        if code != 0:
            progress.log(f"server exited with {code}; see {log}")


def _apply(a, result: SearchResult, console) -> int:
    if result.winner is None:
        console.print("--apply: nothing written (no configuration met the target)")
        return 2
    if result.winner.candidate == result.default.candidate:
        console.print("--apply: nothing written (the current config.pbtxt is the winner)")
        return 0

    model_dir = a.repository / a.model
    log = a.out / f"tune-{a.model}-work" / "verify-server.log"
    backup, served = apply_and_verify(a.repository, a.model, result.winner.candidate, log)
    console.print(f"--apply: wrote {model_dir / 'config.pbtxt'} (old one: {backup.name})")
    if served != result.winner.candidate:
        console.print(f"--apply: the server loaded {served.label}, not the winner; see {log}")
        return 1
    console.print(f"--apply: a server started on {a.repository} serves {served.label}")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    started = time.monotonic()
    deadline = started + a.budget_minutes * 60 - 10  # room to stop the server and write

    with RichProgress() as progress:
        console = progress.console
        subject = served_subject(a.model, a.repository, progress.log)
        a.model = subject.name  # an alias (mobilenet) names the exported folder now
        default = read_serving(read_config(subject.dir))
        cores = machine_cores()
        threads = sorted({cores, 1})
        progress.log(
            f"{a.model} v{subject.version}: p99 target {a.p99_ms:g} ms, {cores} cores, "
            f"default {default.label}; in-process batch curve at {threads} threads"
        )
        budget = Budget(seconds=a.curve_seconds, min_runs=3, max_seconds=3 * a.curve_seconds,
                        warmup=1, repeats=1)  # fmt: skip
        curve = batch_curve(
            subject, threads, list(a.batch_sizes), a.p99_ms, budget, Pruning(), progress.curve
        )
        try:
            space = space_from_curve(curve, a.p99_ms, cores, default, max_instances=a.max_instances)
        except TargetUnreachable as exc:
            console.print(f"target not reachable: {exc}")
            return 2
        for note in space.notes:
            progress.log("  " + note)
        result = _serve_and_search(a, subject, space, default, progress, deadline)
    total = time.monotonic() - started
    console.print(report.console_table(result))
    meta = {
        "model": a.model,
        "version": subject.version,
        "repository": str(a.repository),
        "curve": [{**dataclasses.asdict(p), "throughput": p.throughput} for p in curve],
        "pruning_notes": list(space.notes),
        "grid_size": space.grid_size,
        "total_seconds": round(total, 1),
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    paths = report.write(result, a.out, meta, f"tune-{a.model}")
    console.print("wrote " + ", ".join(map(str, paths)))
    if result.stopped:
        console.print(f"note: {result.stopped}")
    code = 0 if result.winner is not None else 2
    if a.apply:
        code = _apply(a, result, console)
    _quote(a.model, result, space.grid_size, total, console)
    return code


def _quote(
    model: str, result: SearchResult, grid_size: int, total: float, console: Console
) -> None:
    """The figures to quote, last: same run, with their spread, and the time it all took."""
    minutes, seconds = divmod(round(total), 60)  # without --apply's check
    if result.winner is not None:
        console.print(f"winner: {result.winner.candidate.label}; {result.reason}")
    console.print(f"{model}: {result.verdict()}")
    console.print(
        f"{model}: search took {minutes} min {seconds} s ({len(result.measurements)} candidates"
        f" measured, {sum(len(m.trials) for m in result.measurements)} trials; a blind grid: "
        f"{grid_size} candidates)"
    )
