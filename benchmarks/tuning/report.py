"""What the tuner writes: a row per candidate, the console table, CSV/JSON, the chart.

Every figure that was measured more than once carries its min-max range;
figures measured once say so (``trials`` = 1), since their noise is unknown.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from benchmarks.tuning.measure import Measurement, Point
from benchmarks.tuning.search import SearchResult


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def row(m: Measurement, result: SearchResult) -> dict:
    c = m.candidate
    lo, hi = m.rate_range
    peak_lo, peak_hi = m.peak_range
    return {
        "candidate": c.label,
        "default": c == result.default.candidate,
        "winner": result.winner is not None and c == result.winner.candidate,
        "within_noise_of_best": any(t is m for t in result.tied),
        "max_batch_size": c.max_batch_size,
        "preferred_batch_sizes": " ".join(map(str, c.preferred_batch_sizes)),
        "max_queue_delay_us": c.max_queue_delay_us,
        "instances": c.instance_count,
        "intra_op_threads": c.intra_op_threads,
        "trials": len(m.trials),
        "server_rate": _r(m.rate),
        "server_rate_lo": _r(lo),
        "server_rate_hi": _r(hi),
        "spread_pct": _r(m.spread_pct, 1),
        "resolution_pct": _r(m.resolution_pct, 1),
        "p50_ms": _r(m.at_rate("p50_ms")),
        "p99_ms": _r(m.at_rate("p99_ms")),
        "batching_efficiency": _r(m.at_rate("batching_efficiency")),
        "peak_throughput": _r(m.peak_throughput),
        "peak_throughput_lo": _r(peak_lo),
        "peak_throughput_hi": _r(peak_hi),
        "peak_concurrency": _r(m.at_peak("level"), 0),
        "peak_p50_ms": _r(m.at_peak("p50_ms")),
        "peak_p99_ms": _r(m.at_peak("p99_ms")),
        "peak_batching_efficiency": _r(m.at_peak("batching_efficiency")),
        "rejected": m.rejected,
        "seconds": _r(m.seconds, 1),
    }


def rows(result: SearchResult) -> list[dict]:
    return [row(m, result) for m in result.measurements]


def _range(value: float | None, lo: float | None, hi: float | None, trials: int) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if trials < 2 else f"{value:.1f} [{lo:.1f}-{hi:.1f}]"


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def console_table(result: SearchResult) -> object:
    from rich.table import Table

    table = Table(
        title=f"candidates at p99 <= {result.target_p99_ms:g} ms "
        f"(Server rate: highest Poisson rate meeting it; noise {result.noise_pct:.0f}%)",
        title_justify="left",
    )
    for name in (
        "", "candidate", "trials", "Server rate req/s", "p50 ms", "p99 ms", "img/batch",
        "peak img/s", "peak p99 ms", "rejected (all probes)",
    ):  # fmt: skip
        left = name in ("", "candidate")
        table.add_column(name, justify="left" if left else "right", no_wrap=left)
    for r in sorted(rows(result), key=lambda r: -(r["server_rate"] or 0)):
        mark = "*" if r["winner"] else ("=" if r["within_noise_of_best"] else "")
        mark += "d" if r["default"] else ""
        table.add_row(
            mark,
            r["candidate"],
            str(r["trials"]),
            _range(r["server_rate"], r["server_rate_lo"], r["server_rate_hi"], r["trials"]),
            _f(r["p50_ms"]),
            _f(r["p99_ms"]),
            _f(r["batching_efficiency"], ".2f"),
            _range(
                r["peak_throughput"], r["peak_throughput_lo"], r["peak_throughput_hi"], r["trials"]
            ),
            _f(r["peak_p99_ms"]),
            str(r["rejected"]),
        )
    table.caption = "* winner, = within noise of the best, d the default configuration"
    return table


def _points(points: list[Point]) -> list[dict]:
    return [dataclasses.asdict(p) for p in points]


def to_json(result: SearchResult, meta: dict) -> dict:
    return {
        **meta,
        "target_p99_ms": result.target_p99_ms,
        "noise_pct": result.noise_pct,
        "search_seconds": round(result.seconds, 1),
        "stopped": result.stopped,
        "winner": result.winner.candidate.as_dict() if result.winner else None,
        "default": result.default.candidate.as_dict(),
        "reason": result.reason,
        "verdict": result.verdict(),
        "significant": result.significant,
        "comparison": {  # the default vs the tuned configuration, same run
            name: None
            if m is None
            else {
                "label": m.candidate.label,
                "server_rate": _r(m.rate),
                "server_rate_lo": _r(m.rate_range[0]),
                "server_rate_hi": _r(m.rate_range[1]),
                "trials": len(m.trials),
            }
            for name, m in (("default", result.default), ("tuned", result.winner))
        },
        "candidates": [
            {
                **row(m, result),
                "trials_detail": [
                    {
                        "server_rate": t.server_rate,
                        "resolution": t.resolution,
                        "sweep": _points(t.sweep),
                        "rates": _points(t.rates),
                    }
                    for t in m.trials
                ],
            }
            for m in result.measurements
        ],
    }


def chart(result: SearchResult, path: Path) -> Path | None:
    """p99 vs throughput of every open-loop probe, one line per candidate, target dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    roles: dict = {result.default.candidate: "default"}
    if result.best.candidate != result.default.candidate:
        roles[result.best.candidate] = "highest rate"
    if result.winner is not None:
        old = roles.get(result.winner.candidate)
        roles[result.winner.candidate] = "winner" + (f" = {old}" if old else "")
    colours = {"default": "tab:blue", "highest rate": "tab:orange"}
    for m in result.measurements:
        role = roles.get(m.candidate)
        colour = "tab:green" if role and role.startswith("winner") else colours.get(role, "grey")
        for i, t in enumerate(m.trials):  # one line per trial, in throughput order
            pts = sorted((p.throughput, p.p99_ms) for p in t.rates if p.p99_ms is not None)
            if not pts:
                continue
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                markersize=4 if role else 3,
                linewidth=1.8 if role else 0.6,
                alpha=0.95 if role else 0.4,
                color=colour,
                label=f"{role}: {m.candidate.label}" if role and i == 0 else None,
            )
    ax.axhline(result.target_p99_ms, linestyle="--", color="tab:red", label="p99 target")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (images/s), Poisson arrivals")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(
        f"Server-scenario probes per candidate ({len(result.measurements)}; grey: the others)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: SearchResult, out: Path, meta: dict, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = rows(result)
    csv_path = out / f"{stem}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(to_json(result, meta), indent=2) + "\n")
    png = chart(result, out / f"{stem}.png")
    return [csv_path, json_path, *([png] if png else [])]
