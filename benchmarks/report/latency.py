"""Result files of the in-process benchmark: CSV, JSON, a ready-to-paste Markdown
report and the terminal table; plus the server-vs-in-process section that both
reports include when ``serve_vs_inprocess.json`` exists."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from benchmarks.common.machine import MEMORY_METHOD, describe
from benchmarks.common.md_table import fmt as _f
from benchmarks.common.md_table import table as _table
from benchmarks.comparison.section import serve_vs_inprocess_section

NAMES = {
    "torch": "PyTorch",
    "onnxruntime": "ONNX Runtime",
    "onnxruntime-cuda": "ORT CUDA",
    "onnxruntime-tensorrt": "ORT TensorRT",
    "tensorrt": "TensorRT",
}
BASELINE = ("torch", "fp32")


def label(backend: str, precision: str) -> str:
    name = NAMES.get(backend, backend)
    return name if precision in ("fp32", "-") else f"{name} {precision}"


def ok_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def combos(rows: list[dict]) -> list[tuple[str, str]]:
    """(backend, precision) pairs that produced timings, in the order first seen."""
    out: list[tuple[str, str]] = []
    for r in ok_rows(rows):
        if (key := (r["backend"], r["precision"])) not in out:
            out.append(key)
    return out


def models(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in rows))


def find(rows: list[dict], model: str, backend: str, precision: str, batch: int) -> dict | None:
    for r in ok_rows(rows):
        if (r["model"], r["backend"], r["precision"], r["batch"]) == (
            model,
            backend,
            precision,
            batch,
        ):
            return r
    return None


def speedups(rows: list[dict]) -> list[dict]:
    """p50 of PyTorch eager over p50 of every other backend, per model and batch."""
    out = []
    for r in ok_rows(rows):
        if (r["backend"], r["precision"]) == BASELINE:
            continue
        base = find(rows, r["model"], *BASELINE, r["batch"])
        if base:
            out.append(
                {
                    "model": r["model"],
                    "batch": r["batch"],
                    "backend": r["backend"],
                    "precision": r["precision"],
                    "speedup": base["p50_ms"] / r["p50_ms"],
                    "p50_ms": r["p50_ms"],
                    "torch_p50_ms": base["p50_ms"],
                }
            )
    return out


# --- files ------------------------------------------------------------------------


def write_csv(rows: list[dict], path: Path) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write(rows: list[dict], out: Path, meta: dict, charts: list[Path] | None = None) -> list[Path]:
    """latency.csv, latency.json and latency.md under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "latency.csv", out / "latency.json", out / "latency.md"]
    write_csv(rows, paths[0])
    payload = {"machine": meta, "speedups": speedups(rows), "results": rows}
    paths[1].write_text(json.dumps(payload, indent=2) + "\n")
    serve = out / "serve_vs_inprocess.json"
    paths[2].write_text(markdown(rows, meta, charts or [], serve if serve.is_file() else None))
    return paths


# --- Markdown ---------------------------------------------------------------------


def _ms(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['p50_ms']:.2f} ({row['p50_ms_lo']:.2f}–{row['p50_ms_hi']:.2f})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _facts(rows: list[dict], model: str) -> dict:
    return next(r for r in rows if r["model"] == model)


def _measured(rows: list[dict], model: str) -> str:
    scored = [r for r in ok_rows(rows) if r["model"] == model and r["measured_top1"] is not None]
    if not scored:
        return "-"
    r = next((r for r in scored if r["backend"] == "onnxruntime"), scored[0])
    return f"{_pct(r['measured_top1'])} ({r['eval_set']})"


def summary_table(rows: list[dict], batch: int) -> list[str]:
    """One line per model at ``batch``: facts, p50 per backend, speed-ups, best img/s."""
    present = combos(rows)
    others = [c for c in present if c != BASELINE]
    header = ["model", "year", "params (M)", "GMACs", "published top-1", "measured top-1"]
    header += [f"{label(*c)} p50 ms" for c in present]
    header += [f"{label(*c)} speed-up" for c in others if BASELINE in present]
    header += ["best img/s"]
    body = []
    for model in models(ok_rows(rows)):
        f = _facts(rows, model)
        line = [
            model,
            str(f["year"]),
            f"{f['params'] / 1e6:.2f}",
            f"{f['gmacs']:.3g}",
            _f(f["published_top1"], ".1f", "%"),
            _measured(rows, model),
        ]
        line += [_ms(find(rows, model, *c, batch)) for c in present]
        base = find(rows, model, *BASELINE, batch)
        for c in others if BASELINE in present else []:
            row = find(rows, model, *c, batch)
            line.append(f"{base['p50_ms'] / row['p50_ms']:.2f}×" if base and row else "-")
        best = max((r for r in ok_rows(rows) if r["model"] == model), key=lambda r: r["throughput"])
        line.append(
            f"{best['throughput']:.1f} ({label(best['backend'], best['precision'])}, "
            f"b={best['batch']})"
        )
        body.append(line)
    return _table(header, body, right_from=2)


def full_table(rows: list[dict]) -> list[str]:
    header = [
        "model",
        "backend",
        "batch",
        "p50 ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "spread",
        "img/s",
        "runs",
        "peak MB",
        "file MB",
        "top-1 vs ref",
        "measured top-1",
    ]
    body = [
        [
            r["model"],
            label(r["backend"], r["precision"]),
            str(r["batch"]),
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['spread_pct']:.0f}%",
            f"{r['throughput']:.1f} ({r['throughput_lo']:.0f}–{r['throughput_hi']:.0f})",
            str(r["runs"]),
            _f(r["peak_mb"], ".0f"),
            _f(r["model_mb"], ".1f"),
            _pct(r["top1_agreement"]) + (" ⚠" if r["top1_mismatch"] else ""),
            _pct(r["measured_top1"]),
        ]
        for r in ok_rows(rows)
    ]
    return _table(header, body, right_from=2)


def mismatch_lines(rows: list[dict]) -> list[str]:
    flagged = [r for r in ok_rows(rows) if r["top1_mismatch"]]
    seen, lines = set(), []
    for r in flagged:
        key = (r["model"], r["backend"], r["precision"])
        if key not in seen:
            seen.add(key)
            lines.append(
                f"- ⚠ **{r['model']}, {label(r['backend'], r['precision'])}**: top-1 differs from "
                f"{r['reference']} on {100 * (1 - r['top1_agreement']):.1f}% of {r['eval_set']} "
                f"(max relative error {r['max_rel_err']:.2e})"
            )
    if not lines:
        return ["Every backend gave the same top-1 as the reference on every compared image."]
    return lines


def skipped_table(rows: list[dict]) -> list[str]:
    groups: dict[tuple, list[str]] = {}
    for r in rows:
        if r.get("status") != "ok":
            groups.setdefault((r["backend"], r["precision"], r["status"], r["reason"]), [])
            groups[(r["backend"], r["precision"], r["status"], r["reason"])].append(r["model"])
    if not groups:
        return ["Nothing was skipped."]
    every = set(models(rows))
    body = [
        [label(b, p), s, reason, "all" if set(ms) == every else ", ".join(ms)]
        for (b, p, s, reason), ms in groups.items()
    ]
    return _table(["backend", "status", "reason", "models"], body, right_from=99)


def markdown(rows: list[dict], meta: dict, charts: list[Path], serve: Path | None) -> str:
    okr = ok_rows(rows)
    batches = sorted({r["batch"] for r in okr})
    threads = okr[0]["threads"] if okr else None
    other = [max(0.0, r["other_cpu_pct"]) for r in okr if r.get("other_cpu_pct") is not None]
    lines = [
        f"# In-process latency: {len(models(rows))} models, "
        + ", ".join(label(*c) for c in combos(rows)),
        "",
        f"Measured {meta.get('date', '')} on **{describe(meta)}**. "
        f"Every backend ran with {threads} threads. Whole run: "
        f"{_f(meta.get('wall_seconds'), '.0f', ' s')}.",
        "",
    ]
    if other:
        lines += [
            f"Other processes took {min(other):.0f}–{max(other):.0f}% of one core "
            "(per model) during the timed windows: figures from a shared machine, "
            "read the spreads.",
            "",
        ]
    for i, batch in enumerate(batches):
        title = "single image" if batch == 1 else f"{batch} images per call"
        lines += [f"## Batch {batch} ({title})", ""]
        lines += ["p50 in ms, (min–max over repeats); speed-up = PyTorch p50 / backend p50.", ""]
        lines += summary_table(rows, batch) + [""]
        if i == 0 and len(batches) > 1:
            lines += ["(best img/s is over every batch size.)", ""]
    if charts:
        lines += ["## Charts", ""] + [f"![{c.stem}]({c.name})" for c in charts] + [""]
    lines += ["## Output comparison", ""] + mismatch_lines(rows) + [""]
    lines += ["## Skipped", ""] + skipped_table(rows) + [""]
    lines += serve_vs_inprocess_section(serve)
    lines += ["## All results", ""] + full_table(rows) + [""]
    lines += _method(meta, threads)
    return "\n".join(lines)


def _method(meta: dict, threads: int | None) -> list[str]:
    """How the figures were taken: windows, inputs, threads, memory, random weights."""
    budget = meta.get("budget") or {}
    return [
        "## Method",
        "",
        f"- Per (model, backend, precision, batch): {budget.get('repeats')} timed windows, "
        "interleaved across backends with the order rotated per repeat; each window runs "
        f"until ≥ {budget.get('min_runs')} runs and ≥ {budget.get('seconds')} s, or "
        f"{budget.get('max_seconds')} s at most, after one untimed run. Percentiles are "
        "medians over the windows; spread is (max − min) / median of the window p50s; "
        "img/s = batch / p50.",
        "- Inputs: the same real images for every backend (bundled photos, or held-out "
        "digits for LeNet), preprocessed as the model's config.pbtxt says; outputs compared "
        "with PyTorch fp32 on them; measured top-1 only where the weights are real.",
        f"- Threads: {threads} for every backend (PyTorch `set_num_threads`, ONNX Runtime "
        "`intra_op_num_threads`; inter-op 1). Idle threads "
        + (
            "spin (the libraries' defaults)."
            if meta.get("spin")
            else "sleep (PyTorch's OpenMP with OMP_WAIT_POLICY="
            f"{meta.get('omp_wait_policy') or 'unset'}, ONNX Runtime without intra-op "
            "spinning): on a shared machine spinning pools starve their own descheduled "
            "threads; `--spin` measures the defaults."
        ),
        f"- Peak memory: {MEMORY_METHOD}.",
        "- Models with `random` weights are timed as exported; their accuracy column is "
        "the published figure for the architecture, not this network's.",
        "",
    ]


def console_table(rows: list[dict], title: str) -> object:
    """A rich Table of the rows that ran (returned, so a live display can print it)."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("model", "backend", "batch", "p50 ms", "p99 ms", "spread", "img/s",
                "peak MB", "top-1 vs ref", "measured"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("model", "backend") else "right")
    for r in ok_rows(rows):
        t.add_row(
            r["model"],
            label(r["backend"], r["precision"]),
            str(r["batch"]),
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['spread_pct']:.0f}%",
            f"{r['throughput']:.1f}",
            _f(r["peak_mb"], ".0f"),
            _pct(r["top1_agreement"]) + (" !" if r["top1_mismatch"] else ""),
            _pct(r["measured_top1"]),
        )
    for r in rows:
        if r.get("status") != "ok":
            t.add_row(
                r["model"],
                label(r["backend"], r["precision"]),
                "-",
                r["status"],
                "",
                "",
                "",
                "",
                "",
                "",
                style="dim",
            )
    return t
