"""The tuner's progress bar (rich): trials done of those expected, the current load level."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.tuning.candidates import CurvePoint
from benchmarks.tuning.measure import Measurement, Point
from benchmarks.tuning.search import SearchProgress
from modelrepo.serving import ServingConfig


class RichProgress(SearchProgress):
    def __init__(self) -> None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: do not squeeze tables to 80 columns
            console = Console(width=150)
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description:<70}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.bar.add_task("in-process batch curve", total=None)
        self.current = ""

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def log(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False)

    def curve(self, p: CurvePoint) -> None:
        self.log(
            f"  in process: {p.threads} thread(s), batch {p.batch:>2}: p50 {p.p50_ms:7.2f} ms,"
            f" {p.throughput:8.1f} img/s"
        )

    def plan(self, trials: int) -> None:
        self.bar.update(self.task, total=max(trials, int(self.bar.tasks[0].completed)))

    def start(self, candidate: ServingConfig, phase: str) -> None:
        self.current = f"{phase}: {candidate.label}"
        self.bar.update(self.task, description=self.current)

    def point(self, p: Point) -> None:
        what = f"c={p.level:g}" if p.mode == "closed" else f"{p.level:.1f} req/s"
        p99 = "-" if p.p99_ms is None else f"{p.p99_ms:.1f}"
        self.bar.update(self.task, description=f"{self.current} | {what} p99 {p99} ms")

    def done(self, m: Measurement, phase: str) -> None:
        t = m.trials[-1]
        at = t.at_rate
        p99 = f", p99 {at.p99_ms:.1f} ms" if at and at.p99_ms is not None else ""
        self.log(
            f"{phase:>22}: {m.candidate.label:<40} Server rate {t.server_rate:7.1f} req/s{p99},"
            f" peak {t.peak.throughput:.1f} img/s at c={t.peak.level:g}"
        )
        self.bar.update(self.task, advance=1)
