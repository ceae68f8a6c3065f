"""Result files of the load generator: CSV, JSON, Markdown, the terminal table and
the latency-vs-throughput chart (one line per server configuration)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from benchmarks.common.machine import describe
from benchmarks.report.latency import serve_vs_inprocess_section
from benchmarks.report.plots import load_chart, try_charts


def flatten(row: dict, prefix: str = "") -> dict:
    """Nested result dict -> one flat CSV row (``latency.p50_ms``, ``errors.UNAVAILABLE``)."""
    out: dict = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def level(row: dict) -> str:
    return f"c={row['concurrency']}" if row["mode"] == "closed" else f"{row['rate']:g}/s"


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _queue_share(srv: dict) -> float | None:
    queue, compute = srv.get("queue_ms_mean"), srv.get("compute_ms_mean")
    if queue is None or not compute:
        return None
    return 100 * queue / (queue + compute)


COLUMNS = (
    "level",
    "requests",
    "errors",
    "img/s",
    "p50 ms",
    "p90 ms",
    "p95 ms",
    "p99 ms",
    "images/batch",
    "queue ms",
    "compute ms",
    "queue share",
    "client CPU",
    "server CPU",
    "other CPU",
)


def cells(r: dict) -> list[str]:
    lat = r["latency"] or {}
    srv = r["server"] or {}
    return [
        level(r),
        str(r["requests"]),
        ", ".join(f"{k}:{v}" for k, v in r["errors"].items()) or "0",
        f"{r['throughput']:.1f}",
        _fmt(lat.get("p50_ms")),
        _fmt(lat.get("p90_ms")),
        _fmt(lat.get("p95_ms")),
        _fmt(lat.get("p99_ms")),
        _fmt(srv.get("batching_efficiency")),
        _fmt(srv.get("queue_ms_mean")),
        _fmt(srv.get("compute_ms_mean")),
        _pct(_queue_share(srv)),
        f"{r['client_cpu_pct']:.0f}%",
        _pct(r.get("server_cpu_pct")),
        _pct(r.get("other_cpu_pct")),
    ]


def table(rows: list[dict], title: str = "load") -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("config", *COLUMNS):
        t.add_column(col, justify="left" if col == "config" else "right")
    for r in rows:
        t.add_row(r.get("config", "server"), *cells(r))
    console = Console()
    if not console.is_terminal:  # pipes and files: do not squeeze to 80 columns
        console = Console(width=180)
    console.print(t)


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(b) + " |" for b in body]


def _comparison(rows: list[dict]) -> list[str]:
    """Batching on vs off at each level, when both were run."""
    on = {level(r): r for r in rows if r.get("config", "").startswith("batching on")}
    off = {level(r): r for r in rows if r.get("config", "").startswith("batching off")}
    both = [c for c in on if c in off]
    if not both:
        return []
    body = []
    for c in both:
        a, b = on[c], off[c]
        p50 = [(x["latency"] or {}).get("p50_ms") for x in (a, b)]
        body.append(
            [
                c,
                f"{a['throughput']:.1f}",
                f"{b['throughput']:.1f}",
                f"{a['throughput'] / b['throughput']:.2f}×" if b["throughput"] else "-",
                _fmt(p50[0]),
                _fmt(p50[1]),
                _fmt((a["server"] or {}).get("batching_efficiency")),
            ]
        )
    header = [
        "level",
        "img/s on",
        "img/s off",
        "on / off",
        "p50 ms on",
        "p50 ms off",
        "images/batch on",
    ]
    return ["## Dynamic batching on vs off", ""] + _md_table(header, body) + [""]


def markdown(rows: list[dict], meta: dict, chart: Path | None, serve: Path | None) -> str:
    lines = [
        f"# Load against the server: {meta.get('model')}",
        "",
        f"Measured {meta.get('date', '')} on **{describe(meta.get('machine') or {})}**. "
        f"Requests: {meta.get('inputs')}, {meta.get('batch')} image(s) each, "
        f"{meta.get('seconds')} s per level after {meta.get('warmup')} s of warm-up. "
        "Client and server share this machine: their CPU (% of one core) is in the "
        "tables, with what other processes took meanwhile.",
        "",
    ]
    for config in dict.fromkeys(r.get("config", "server") for r in rows):
        for mode in ("closed", "open"):
            sel = [r for r in rows if r.get("config", "server") == config and r["mode"] == mode]
            if sel:
                lines += [f"## {config}, {mode} loop", ""]
                lines += _md_table(list(COLUMNS), [cells(r) for r in sel]) + [""]
    lines += _comparison(rows)
    if chart is not None:
        lines += [f"![latency vs throughput]({chart.name})", ""]
    lines += serve_vs_inprocess_section(serve)
    lines += [
        "images/batch: images inferred per executed batch (server metrics delta over the "
        "window); queue ms: mean time a request waited for its batch; compute ms: mean "
        "backend time per batch; queue share = queue / (queue + compute).",
        "",
    ]
    return "\n".join(lines)


def write(rows: list[dict], out: Path, meta: dict, chart: bool = True) -> list[Path]:
    """load.csv, load.json, load.md (and load.png) under ``out``; their paths."""

    out.mkdir(parents=True, exist_ok=True)
    flat = [flatten(r) for r in rows]
    fields: list[str] = []
    for row in flat:
        fields += [k for k in row if k not in fields]
    paths = [out / "load.csv", out / "load.json", out / "load.md"]
    with open(paths[0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat)
    paths[1].write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    pngs = try_charts(load_chart, rows, out / "load.png", meta.get("model", "")) if chart else []
    serve = out / "serve_vs_inprocess.json"
    paths[2].write_text(
        markdown(rows, meta, pngs[0] if pngs else None, serve if serve.is_file() else None)
    )
    return paths + pngs
