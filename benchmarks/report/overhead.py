"""Result files of benchmarks/overhead.py: the per-cell summary (ours / floor, the
headline), and JSON, CSV and Markdown of every measured window."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from statistics import median

from benchmarks.common.machine import describe
from benchmarks.common.md_table import fmt, table
from benchmarks.report.load import flatten

SERVERS = ("ours", "floor")


def _spread(values: list[float]) -> dict:
    """Median and range of ``values`` (None when there are none)."""
    if not values:
        return {"median": None, "lo": None, "hi": None}
    return {"median": median(values), "lo": min(values), "hi": max(values)}


def _ratios(ours: dict[int, dict], floor: dict[int, dict], key: str) -> list[float]:
    """ours/floor of ``key``, per round that measured both."""
    out = []
    for r, row in ours.items():
        other = floor.get(r)
        if other and row.get(key) and other.get(key):
            out.append(row[key] / other[key])
    return out


def summarize(runs: list[dict]) -> list[dict]:
    """One dict per (model, protocol, clients): medians over rounds, and ours/floor per round."""
    cells: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: {s: {} for s in SERVERS})
    for row in runs:
        cells[row["model"], row["protocol"], row["clients"]][row["server"]][row["round"]] = row
    out = []
    for (model, protocol, clients), by in cells.items():
        ours, floor = by["ours"], by["floor"]
        cell: dict = {"model": model, "protocol": protocol, "clients": clients}
        cell["rounds"] = len(ours)
        for name, rows in (("ours", ours), ("floor", floor)):
            for key in ("requests_per_s", "server_cpu_us_per_request", "p50_ms"):
                values = [r[key] for r in rows.values() if r.get(key) is not None]
                cell[f"{name}_{key}"] = _spread(values)
            cell[f"{name}_errors"] = sum(r["error_count"] for r in rows.values())
        cell["cpu_ratio"] = _spread(_ratios(ours, floor, "server_cpu_us_per_request"))
        cell["requests_per_s_ratio"] = _spread(_ratios(ours, floor, "requests_per_s"))
        out.append(cell)
    return out


def http_vs_grpc(runs: list[dict]) -> list[dict]:
    """Our server's HTTP (binary extension) CPU per request over its gRPC one, per round."""
    by: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: {"grpc": {}, "http": {}})
    for row in runs:
        if row["server"] == "ours":
            by[row["model"], row["clients"]][row["protocol"]][row["round"]] = row
    return [
        {"model": m, "clients": c,
         "cpu_ratio": _spread(_ratios(p["http"], p["grpc"], "server_cpu_us_per_request"))}
        for (m, c), p in by.items() if p["http"] and p["grpc"]
    ]  # fmt: skip


def _range(s: dict, spec: str, suffix: str = "") -> str:
    if s["median"] is None:
        return "-"
    if s["lo"] == s["hi"]:
        return fmt(s["median"], spec, suffix)
    return f"{fmt(s['median'], spec, suffix)} ({fmt(s['lo'], spec)}–{fmt(s['hi'], spec)})"


def _headline(summary: list[dict]) -> list[str]:
    header = ["model", "protocol", "clients", "CPU/request ours ÷ floor", "req/s ours ÷ floor",
              "ours µs/request", "floor µs/request", "ours req/s", "floor req/s",
              "ours p50 ms", "floor p50 ms", "errors"]  # fmt: skip
    body = [
        [c["model"], c["protocol"], str(c["clients"]),
         f"**{_range(c['cpu_ratio'], '.2f', '×')}**", _range(c["requests_per_s_ratio"], ".2f", "×"),
         _range(c["ours_server_cpu_us_per_request"], ".0f"),
         _range(c["floor_server_cpu_us_per_request"], ".0f"),
         _range(c["ours_requests_per_s"], ",.0f"), _range(c["floor_requests_per_s"], ",.0f"),
         _range(c["ours_p50_ms"], ".2f"), _range(c["floor_p50_ms"], ".2f"),
         f"{c['ours_errors']} / {c['floor_errors']}"]
        for c in summary
    ]  # fmt: skip
    return table(header, body, right_from=3)


def _windows(runs: list[dict]) -> list[str]:
    header = ["round", "model", "protocol", "clients", "server", "requests", "req/s",
              "server CPU µs/request", "server CPU", "client CPU", "other CPU", "p50 ms",
              "p99 ms", "errors"]  # fmt: skip
    body = [
        [str(r["round"]), r["model"], r["protocol"], str(r["clients"]), r["server_kind"],
         str(r["requests"]), fmt(r["requests_per_s"], ",.0f"),
         fmt(r["server_cpu_us_per_request"], ".0f"), fmt(r["server_cpu_pct"], ".0f", "%"),
         fmt(r["client_cpu_pct"], ".0f", "%"), fmt(r["other_cpu_pct"], ".0f", "%"),
         fmt(r["p50_ms"]), fmt(r["p99_ms"]),
         ", ".join(f"{k}:{v}" for k, v in r["errors"].items()) or "0"]
        for r in runs
    ]  # fmt: skip
    return table(header, body, right_from=5)


def markdown(doc: dict) -> str:
    meta = doc["meta"]
    lines = [
        "# Server CPU per request against the transport's floor",
        "",
        f"Machine: {describe(meta['machine'])}.",
        f"Our server: `python -m server{' ' + meta['server_args'] if meta['server_args'] else ''}`"
        "; floors: a bare grpc.aio and a "
        f"bare aiohttp server answering a fixed response. {meta['rounds']} round(s) of "
        f"{meta['seconds']:g} s windows (after {meta['warmup']:g} s warm-up), interleaved.",
        "",
        "## Ours ÷ floor (median over rounds, range in brackets)",
        "",
        *_headline(doc["summary"]),
        "",
    ]
    if doc["http_vs_grpc"]:
        body = [[h["model"], str(h["clients"]), _range(h["cpu_ratio"], ".2f", "×")]
                for h in doc["http_vs_grpc"]]  # fmt: skip
        lines += ["## Our HTTP (binary extension) ÷ our gRPC, CPU per request", ""]
        lines += [*table(["model", "clients", "HTTP ÷ gRPC"], body, right_from=2), ""]
    lines += ["## Every window", "", *_windows(doc["runs"]), ""]
    if doc["profiles"]:
        lines += ["## Profiles (py-spy --native, our server, not measured windows)", ""]
        for p in doc["profiles"]:
            files = ", ".join(f"{k}: `{Path(v).name}`" for k, v in p["files"].items())
            lines.append(f"- {p['model']} {p['protocol']} c={p['clients']}: {files}")
        lines.append("")
    return "\n".join(lines)


def write(doc: dict, out: Path) -> list[Path]:
    """overhead.json (everything), overhead.csv (every window), overhead-summary.csv,
    overhead.md."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / n for n in ("overhead.json", "overhead.csv", "overhead-summary.csv")]
    paths[0].write_text(json.dumps(doc, indent=2, default=str))
    for path, rows in ((paths[1], doc["runs"]), (paths[2], doc["summary"])):
        flat = [flatten(r) for r in rows]
        fields = list(dict.fromkeys(k for r in flat for k in r))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(flat)
    md = out / "overhead.md"
    md.write_text(markdown(doc))
    return [*paths, md]
