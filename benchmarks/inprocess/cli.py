"""In-process latency: PyTorch eager vs ONNX Runtime (and GPU backends where present).

    python benchmarks/latency.py                       # the default comparison (10 models)
    python benchmarks/latency.py --models mobilenet_v2,efficientnet_b0,resnet50,vgg16 \\
        --backends torch,onnxruntime --batch-sizes 1,8,32 --out results/
    python benchmarks/latency.py --precisions fp32,int8 --models resnet50
    python benchmarks/latency.py --all                 # the whole zoo

For every model x backend x precision x batch size: a warm-up, then timed
windows interleaved across backends; p50/p90/p95/p99 latency, images/s, peak
memory, parameters, GMACs, file size, published and (real weights only)
measured top-1, and the top-1 agreement with PyTorch on the same images.
Backends or precisions this machine cannot run are reported as skipped with
the reason. Models missing from --repository are exported there once.

Writes <out>/latency.csv, latency.json, latency.md (a ready-to-paste report)
and PNG charts; a table per model and a progress bar while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.common.machine import machine
from benchmarks.common.zoo import DEFAULT_MODELS, default_repository
from benchmarks.inprocess.backends import BACKENDS, PRECISIONS
from benchmarks.inprocess.timing import BenchCfg, Budget, Progress, benchmark
from benchmarks.report import latency as report
from benchmarks.report.plots import latency_charts, try_charts


class RichProgress(Progress):
    """A progress bar over the timed windows, a table per finished model."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        console = Console()
        if not console.is_terminal:  # logs and pipes: do not squeeze tables to 80 columns
            console = Console(width=150)
        self.bar = Bar(
            TextColumn("{task.description:<44}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.bar.add_task("loading", total=0)

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def log(self, line: str) -> None:
        self.bar.console.print(line, markup=False, highlight=False)

    def plan(self, windows: int) -> None:
        total = self.bar.tasks[0].total or 0
        self.bar.update(self.task, total=max(0, total + windows))

    def advance(self, what: str) -> None:
        self.bar.update(self.task, description=what, advance=1)

    def model_done(self, rows: list[dict]) -> None:
        if rows:
            self.bar.console.print(report.console_table(rows, rows[0]["model"]))


def _ints(text: str, flag: str, p: argparse.ArgumentParser) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        p.error(f"{flag} '{text}' must be comma-separated integers")
    if not values or any(v < 1 for v in values):
        p.error(f"{flag} '{text}' must hold integers >= 1")
    return values


def _choices(text: str, allowed: tuple[str, ...], flag: str, p) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        p.error(f"{flag}: unknown {bad or text!r}; choose from {', '.join(allowed)}")
    return values


def parse_args(argv: list[str] | None = None) -> BenchCfg:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated")
    p.add_argument("--all", action="store_true", help="every model of the zoo")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"of {', '.join(BACKENDS)}")
    p.add_argument("--precisions", default="fp32", help=f"of {', '.join(PRECISIONS)}")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for every backend")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum per timed window")
    p.add_argument("--min-runs", type=int, default=10, help="minimum runs per window")
    p.add_argument("--max-seconds", type=float, default=3.0, help="a window's hard stop")
    p.add_argument("--repeats", type=int, default=3, help="interleaved windows per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per batch after loading")
    p.add_argument("--repository", type=Path, default=default_repository())
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--no-charts", action="store_true")
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="measure nothing: rewrite the report and charts from an earlier latency.json",
    )
    p.add_argument(
        "--spin",
        action="store_true",
        help="let idle threads spin (the libraries' defaults): faster on an idle machine,\n"
        "collapses when other processes want the cores; default: idle threads sleep",
    )
    a = p.parse_args(argv)
    if a.threads < 1 or a.min_runs < 1 or a.repeats < 1 or a.warmup < 0:
        p.error("--threads, --min-runs and --repeats must be >= 1, --warmup >= 0")
    if a.seconds < 0 or a.max_seconds <= 0:
        p.error("--seconds must be >= 0 and --max-seconds > 0")
    from exporter.registry import UnknownModelError, list_models, resolve_name  # torch

    names = list_models() if a.all else [m for m in a.models.split(",") if m.strip()]
    try:
        models = tuple(dict.fromkeys(resolve_name(m) for m in names))
    except UnknownModelError as exc:
        p.error(str(exc))
    return BenchCfg(
        models=models,
        backends=_choices(a.backends, BACKENDS, "--backends", p),
        precisions=_choices(a.precisions, PRECISIONS, "--precisions", p),
        batch_sizes=_ints(a.batch_sizes, "--batch-sizes", p),
        threads=a.threads,
        budget=Budget(a.seconds, a.min_runs, a.max_seconds, a.warmup, a.repeats),
        repository=a.repository,
        out=a.out,
        charts=not a.no_charts,
        spin=a.spin,
        from_json=a.from_json,
    )


def run(cfg: BenchCfg, progress: Progress | None = None) -> list[dict]:
    """Measure, then write every output file under ``cfg.out``; the result rows."""
    try:
        import torch

        torch.set_num_interop_threads(1)  # only possible before any parallel work
    except RuntimeError:
        pass
    meta = {
        **machine(),
        "threads": cfg.threads,
        "budget": asdict(cfg.budget),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "spin": cfg.spin,
        "argv": sys.argv[1:],
    }
    started = time.perf_counter()
    rows = benchmark(cfg, progress)
    meta["wall_seconds"] = round(time.perf_counter() - started, 1)
    cfg.out.mkdir(parents=True, exist_ok=True)
    pngs = try_charts(latency_charts, rows, cfg.out) if cfg.charts else []
    report.write(rows, cfg.out, meta, pngs)
    return rows


def rewrite(source: Path, out: Path, charts: bool = True) -> int:
    """The CSV, Markdown and charts again from a latency.json (e.g. into docs/)."""
    data = json.loads(source.read_text())
    rows, meta = data["results"], data["machine"]
    out.mkdir(parents=True, exist_ok=True)
    pngs = try_charts(latency_charts, rows, out) if charts else []
    report.write(rows, out, meta, pngs)
    print(f"rewrote {out}/latency.csv, .json, .md and {len(pngs)} charts from {source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    if "--spin" not in (sys.argv[1:] if argv is None else argv):
        # PyTorch's OpenMP threads spin at barriers by default; with another process on one
        # of 2 cores a spinning thread starves its descheduled sibling (measured: PyTorch
        # mobilenet_v2 batch 1 at 300-850 ms instead of 30-45 ms). Read when torch loads,
        # so before parse_args imports the model registry.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cfg = parse_args(argv)
    if cfg.from_json is not None:
        return rewrite(cfg.from_json, cfg.out, cfg.charts)
    started = time.perf_counter()
    with RichProgress() as progress:
        progress.log(
            f"{len(cfg.models)} models, backends {', '.join(cfg.backends)}, "
            f"{cfg.threads} threads; results to {cfg.out}/"
        )
        rows = run(cfg, progress)
        console = progress.bar.console
    console.print(report.console_table(rows, "all results"))
    first = min(cfg.batch_sizes)
    for s in report.speedups(rows):
        if s["batch"] == first:
            console.print(
                f"{s['model']:>20} batch {first}: {report.label(s['backend'], s['precision'])}"
                f" {s['speedup']:.2f}x PyTorch ({s['p50_ms']:.2f} vs {s['torch_p50_ms']:.2f} ms)",
                highlight=False,
            )
    errors = [r for r in rows if r.get("status") == "error"]
    console.print(
        f"wrote {cfg.out}/latency.csv, .json, .md{' and charts' if cfg.charts else ''} in "
        f"{time.perf_counter() - started:.0f} s" + (f"; {len(errors)} errors" if errors else "")
    )
    return 1 if errors else 0
