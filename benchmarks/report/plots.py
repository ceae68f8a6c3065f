"""PNG charts of the benchmark results (matplotlib, headless Agg backend).

In-process: latency vs GMACs and throughput vs parameters (log axes, every
model labelled), accuracy vs latency with its Pareto front, and the speed-up
of each backend over PyTorch eager. Load: latency vs throughput per server
configuration. Without matplotlib the charts are skipped with a message.
"""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.report.latency import BASELINE, combos, label, models, ok_rows, speedups

MARKERS = "os^Dv<>P*X"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    return path


def _label_offsets(pts: list[tuple]) -> list[tuple[int, int]]:
    """Text offsets for point labels: points that sit close together on log axes (b0 and
    lite0 share their GMACs) get their labels stacked downwards instead of on top of
    each other."""
    logs = [(math.log10(p[0]), math.log10(p[1])) for p in pts]
    offsets: list[tuple[int, int]] = [(4, 3)] * len(pts)
    placed: list[int] = []
    for i in sorted(range(len(pts)), key=lambda i: (-logs[i][1], logs[i][0])):
        near = [j for j in placed if abs(logs[j][0] - logs[i][0]) < 0.25
                and abs(logs[j][1] - logs[i][1]) < 0.25]  # fmt: skip
        offsets[i] = (4, 3 - 10 * len(near))
        placed.append(i)
    return offsets


def _labelled_scatter(ax, rows: list[dict], x_of, y_of, annotate: tuple[str, str]) -> None:
    """One series per (backend, precision); model names next to the ``annotate`` series."""
    for i, combo in enumerate(combos(rows)):
        pts = [
            (x_of(r), y_of(r), r["model"]) for r in rows if (r["backend"], r["precision"]) == combo
        ]
        pts = [p for p in pts if p[0] and p[1]]
        if not pts:
            continue
        ax.scatter(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker=MARKERS[i % len(MARKERS)],
            label=label(*combo),
            alpha=0.8,
        )
        if combo == annotate:
            for (x, y, name), offset in zip(pts, _label_offsets(pts), strict=True):
                ax.annotate(name, (x, y), textcoords="offset points", xytext=offset, fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _annotated_combo(rows: list[dict]) -> tuple[str, str]:
    present = combos(rows)
    return ("onnxruntime", "fp32") if ("onnxruntime", "fp32") in present else present[0]


def latency_charts(rows: list[dict], out: Path, title: str = "") -> list[Path]:
    """The four in-process charts under ``out``; [] when nothing ran."""
    okr = ok_rows(rows)
    if not okr:
        return []
    plt = _pyplot()
    first = min(r["batch"] for r in okr)
    at_first = [r for r in okr if r["batch"] == first]
    annotate = _annotated_combo(okr)
    paths = []

    fig, ax = plt.subplots(figsize=(8, 5.5))
    _labelled_scatter(ax, at_first, lambda r: r["gmacs"], lambda r: r["p50_ms"], annotate)
    ax.set_xlabel("GMACs per image (log)")
    ax.set_ylabel(f"p50 latency at batch {first}, ms (log)")
    ax.set_title(f"Latency vs compute {title}".strip())
    paths.append(_save(fig, out / "latency_vs_gmacs.png"))

    best: dict[tuple, dict] = {}
    for r in okr:
        key = (r["model"], r["backend"], r["precision"])
        if key not in best or r["throughput"] > best[key]["throughput"]:
            best[key] = r
    fig, ax = plt.subplots(figsize=(8, 5.5))
    _labelled_scatter(
        ax, list(best.values()), lambda r: r["params"] / 1e6, lambda r: r["throughput"], annotate
    )
    ax.set_xlabel("parameters, millions (log)")
    ax.set_ylabel("best throughput over batch sizes, images/s (log)")
    ax.set_title(f"Throughput vs size {title}".strip())
    paths.append(_save(fig, out / "throughput_vs_params.png"))

    if (path := _accuracy_chart(plt, at_first, annotate, out, first)) is not None:
        paths.append(path)
    if (path := _speedup_chart(plt, okr, out, first)) is not None:
        paths.append(path)
    plt.close("all")
    return paths


def _accuracy_chart(plt, rows: list[dict], combo: tuple[str, str], out: Path, batch: int):
    """Published (and measured) ImageNet top-1 against latency, with the Pareto front."""
    pts = [r for r in rows if (r["backend"], r["precision"]) == combo and r["published_top1"]]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs = [r["p50_ms"] for r in pts]
    ys = [r["published_top1"] for r in pts]
    ax.scatter(xs, ys, label="published ImageNet top-1 of the architecture", marker="o")
    for k, r in enumerate(sorted(pts, key=lambda r: r["p50_ms"])):
        name = r["model"]
        if r.get("measured_top1") is not None:  # a handful of photos: a note, not a point
            name += f" (measured here: {100 * r['measured_top1']:.0f}% of {r['eval_set']})"
        ax.annotate(
            name,
            (r["p50_ms"], r["published_top1"]),
            textcoords="offset points",
            xytext=(4, 3) if k % 2 == 0 else (4, -9),
            fontsize=7,
        )
    front, best = [], -1.0
    for x, y in sorted(zip(xs, ys, strict=True)):
        if y > best:
            front.append((x, y))
            best = y
    ax.step(
        [p[0] for p in front],
        [p[1] for p in front],
        where="post",
        linestyle="--",
        color="grey",
        label="Pareto front (nothing both faster and more accurate)",
    )
    ax.set_xscale("log")
    ax.set_xlabel(f"{label(*combo)} p50 latency at batch {batch}, ms (log)")
    ax.set_ylabel("ImageNet top-1, %")
    ax.set_title("Accuracy vs latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "accuracy_vs_latency.png")


def _speedup_chart(plt, rows: list[dict], out: Path, batch: int):
    ups = [s for s in speedups(rows) if s["batch"] == batch]
    if not ups:
        return None
    names = [m for m in models(rows) if any(s["model"] == m for s in ups)]
    kinds = [c for c in combos(rows) if c != BASELINE]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) * max(1, len(kinds)) + 1.5))
    height = 0.8 / max(1, len(kinds))
    for k, combo in enumerate(kinds):
        vals = []
        for m in names:
            s = next(
                (s for s in ups if (s["model"], s["backend"], s["precision"]) == (m, *combo)), None
            )
            vals.append(s["speedup"] if s else 0.0)
        ys = [i + k * height for i in range(len(names))]
        bars = ax.barh(ys, vals, height=height, label=label(*combo))
        ax.bar_label(bars, labels=[f"{v:.2f}×" if v else "" for v in vals], fontsize=7, padding=2)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([i + height * (len(kinds) - 1) / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlabel(f"speed-up over PyTorch eager at batch {batch} (p50 ratio)")
    ax.set_title("Speed-up over PyTorch eager")
    ax.legend(fontsize=8)
    return _save(fig, out / "speedup.png")


def load_chart(rows: list[dict], path: Path, model: str = "") -> Path | None:
    """p50 and p99 latency against throughput, one line per configuration and mode."""
    series: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("latency"):
            series.setdefault(f"{r.get('config', 'server')}, {r['mode']} loop", []).append(r)
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(pts, key=lambda r: r["throughput"])
        xs = [r["throughput"] for r in pts]
        line = ax.plot(
            xs, [r["latency"]["p50_ms"] for r in pts], marker=MARKERS[i % 10], label=f"{name}: p50"
        )[0]
        ax.plot(
            xs,
            [r["latency"]["p99_ms"] for r in pts],
            linestyle="--",
            marker=MARKERS[i % 10],
            color=line.get_color(),
            alpha=0.6,
            label=f"{name}: p99",
        )
        for r in pts:
            level = f"c={r['concurrency']}" if r["mode"] == "closed" else f"{r['rate']:g}/s"
            ax.annotate(
                level,
                (r["throughput"], r["latency"]["p50_ms"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
            )
    ax.set_yscale("log")
    ax.set_xlabel("throughput, images/s")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title(f"Latency vs throughput {model}".strip())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    saved = _save(fig, path)
    plt.close("all")
    return saved


def try_charts(make, *args) -> list[Path]:
    """Run a chart function; without matplotlib say so and go on."""
    try:
        result = make(*args)
    except ImportError as exc:
        print(f"charts skipped: {exc} (pip install matplotlib)")
        return []
    if result is None:
        return []
    return result if isinstance(result, list) else [result]
