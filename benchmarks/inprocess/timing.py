"""The in-process measurement: model x backend x precision x batch size.

Per model, every runner is loaded (peak memory measured around the load and
a warm-up pass at every batch size), runs the same real images once for the
output comparison and the measured top-1, and then the timed windows are
interleaved: repeat r runs every backend once at a batch size, in an order
rotated per repeat, so that a host that changes speed mid-run (this VM does)
hits every backend alike. Rows hold medians over the repeats and their
min/max spread; combinations that cannot run here become "skipped" rows.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from benchmarks.common.machine import PeakMemory, machine_cpu_seconds
from benchmarks.common.stats import LatencyStats, combine, summarize
from benchmarks.common.zoo import Subject, ensure_exported
from benchmarks.inprocess import inputs
from benchmarks.inprocess.backends import Runner, Skipped, open_runner, prepare, skip_reason

Log = Callable[[str], None]


@dataclass(frozen=True)
class Budget:
    """How long each timed window runs; a window ends when both ``seconds`` and
    ``min_runs`` are reached, or at ``max_seconds`` whatever the count (VGG-16)."""

    seconds: float = 1.0
    min_runs: int = 10
    max_seconds: float = 3.0
    warmup: int = 2  # runs per batch size right after loading
    repeats: int = 3  # interleaved windows per (backend, precision, batch)


@dataclass(frozen=True)
class BenchCfg:
    models: tuple[str, ...]
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    threads: int
    budget: Budget
    repository: Path
    out: Path
    charts: bool = True
    spin: bool = False  # let idle runtime threads spin (the libraries' default) or sleep
    from_json: Path | None = None  # latency.py --from-json: rewrite the report, measure nothing


class Progress:
    """What the loop reports: a line, a finished model's rows, windows done."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def log(self, line: str) -> None:
        print(line, flush=True)

    def once(self, line: str) -> None:
        """Log ``line`` the first time only (the same skip reason for every model)."""
        if line not in self._seen:
            self._seen.add(line)
            self.log(line)

    def model_done(self, rows: list[dict]) -> None: ...

    def plan(self, windows: int) -> None: ...

    def advance(self, what: str) -> None: ...


def time_window(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, budget: Budget) -> list:
    """Per-run wall times (s) of one window, after one untimed run (caches, after the
    other backends ran)."""
    run(x)
    times: list[float] = []
    clock = time.perf_counter
    start = clock()
    while True:
        t0 = clock()
        run(x)
        t1 = clock()
        times.append(t1 - t0)
        elapsed = t1 - start
        if elapsed >= budget.max_seconds or (
            len(times) >= budget.min_runs and elapsed >= budget.seconds
        ):
            return times


def _outputs(runner: Runner, x: np.ndarray, chunk: int = 16) -> np.ndarray:
    return np.concatenate([runner.run(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def _compare(out: np.ndarray, ref: np.ndarray) -> dict:
    agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
    scale = float(np.abs(ref).max()) or 1.0
    return {
        "top1_agreement": agree,
        "max_rel_err": float(np.abs(out - ref).max()) / scale,
        "top1_mismatch": agree < 1.0,
    }


def _not_run(facts: dict, backend: str, precision: str, status: str, reason: str) -> dict:
    return {
        **facts,
        "backend": backend,
        "precision": precision,
        "batch": None,
        "status": status,
        "reason": reason,
    }


def _load(
    subject: Subject, cfg: BenchCfg, evalset: inputs.EvalSet, facts: dict, progress: Progress
) -> tuple[list[tuple[Runner, float | None, np.ndarray]], list[dict]]:
    """Every runnable (backend, precision) loaded and warmed up; the others as rows."""
    calibrate = cache(lambda: inputs.calibration(subject))
    loaded, not_run = [], []
    for backend in cfg.backends:
        for precision in cfg.precisions:
            if (why := skip_reason(backend, precision)) is not None:
                not_run.append(_not_run(facts, backend, precision, "skipped", why))
                continue
            try:
                prepare(subject, backend, precision, calibrate)
                with PeakMemory() as mem:
                    runner = open_runner(
                        subject, backend, precision, cfg.threads, calibrate, cfg.spin
                    )
                    outputs = _outputs(runner, evalset.x)
                    for batch in cfg.batch_sizes:
                        x = inputs.timing_input(evalset, batch)
                        for _ in range(cfg.budget.warmup):
                            runner.run(x)
                loaded.append((runner, mem.mb, outputs))
                continue
            except Skipped as exc:
                row = _not_run(facts, backend, precision, "skipped", str(exc))
            except Exception as exc:  # one broken combination must not end the run
                progress.log(traceback.format_exc())
                row = _not_run(facts, backend, precision, "error", f"{type(exc).__name__}: {exc}")
            not_run.append(row)
            progress.plan(-len(cfg.batch_sizes) * cfg.budget.repeats)
            progress.once(f"{backend} {precision}: {row['status']}: {row['reason']}")
    return loaded, not_run


def _agreement(
    loaded: list[tuple[Runner, float | None, np.ndarray]], evalset: inputs.EvalSet, trained: bool
) -> list[dict]:
    """Each runner's outputs against the reference (PyTorch FP32 where it loaded, else the
    first runner), and its top-1 on the eval set where the weights are trained."""
    ref_runner, _, ref = next(
        (item for item in loaded if (item[0].backend, item[0].precision) == ("torch", "fp32")),
        loaded[0],
    )
    scored = trained and evalset.accepted is not None
    return [
        {
            "reference": f"{ref_runner.backend} {ref_runner.precision}",
            **_compare(out, ref),
            "measured_top1": inputs.top1(out, evalset.accepted) if scored else None,
            "eval_set": evalset.description,
        }
        for _, _, out in loaded
    ]


def measure_model(name: str, cfg: BenchCfg, progress: Progress) -> list[dict]:
    subject = ensure_exported(name, cfg.repository, progress.log)
    facts = subject.facts()
    evalset = inputs.eval_set(subject)
    loaded, rows = _load(subject, cfg, evalset, facts, progress)
    if not loaded:
        return rows
    common = _agreement(loaded, evalset, subject.trained)
    own0, all0 = time.process_time(), machine_cpu_seconds()
    wall0 = time.perf_counter()
    for batch in cfg.batch_sizes:
        x = inputs.timing_input(evalset, batch)
        windows: list[list[LatencyStats]] = [[] for _ in loaded]
        for r in range(cfg.budget.repeats):
            order = list(range(len(loaded)))
            order = order[r % len(order) :] + order[: r % len(order)]
            for i in order:
                runner = loaded[i][0]
                progress.advance(f"{subject.name} {runner.backend} {runner.precision} b={batch}")
                windows[i].append(summarize(time_window(runner.run, x, cfg.budget), batch))
        for i, (runner, peak_mb, _) in enumerate(loaded):
            rows.append(
                {
                    **facts,
                    "backend": runner.backend,
                    "precision": runner.precision,
                    "batch": batch,
                    "status": "ok",
                    "reason": None,
                    "threads": cfg.threads,
                    "detail": runner.detail,
                    **combine(windows[i]),
                    "peak_mb": None if peak_mb is None else round(peak_mb, 1),
                    "model_mb": round(runner.model_mb, 2) if runner.model_mb else None,
                    **common[i],
                }
            )
    wall = time.perf_counter() - wall0
    own1, all1 = time.process_time(), machine_cpu_seconds()
    other = None
    if all0 is not None and all1 is not None:  # clock-tick counters: clamp a tiny negative
        other = max(0.0, 100 * ((all1 - all0) - (own1 - own0)) / wall)
    for row in rows:
        row["other_cpu_pct"] = None if other is None else round(other, 1)
    for runner, _, _ in loaded:
        runner.close()
    del loaded
    gc.collect()
    return rows


def benchmark(cfg: BenchCfg, progress: Progress | None = None) -> list[dict]:
    """One row per (model, backend, precision, batch); skipped/error rows have batch None."""
    progress = progress or Progress()
    static = sum(
        skip_reason(b, p) is None for b in cfg.backends for p in cfg.precisions
    )  # combinations that may run
    progress.plan(len(cfg.models) * len(cfg.batch_sizes) * cfg.budget.repeats * static)
    rows: list[dict] = []
    for name in cfg.models:
        try:
            model_rows = measure_model(name, cfg, progress)
        except Exception as exc:  # e.g. an export that fails its parity gate: say so, go on
            progress.log(traceback.format_exc())
            reason = f"{type(exc).__name__}: {exc}"
            model_rows = [_not_run({"model": name}, "-", "-", "error", reason)]
        progress.model_done(model_rows)
        rows += model_rows
    return rows
