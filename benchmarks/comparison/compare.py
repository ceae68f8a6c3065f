"""The serve-vs-in-process comparison's arithmetic and printout (see serve_vs_inprocess.py).

Each server slice is compared with the mean of the in-process slices just before and
after it; a pair whose two in-process slices disagree by more than STABLE_TOLERANCE
straddles a change of the host's speed and is left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from benchmarks.common.md_table import fmt

LATENCY_TARGET_MS = 1.0
THROUGHPUT_TARGET = 0.90
STABLE_TOLERANCE = 0.15  # in-process before/after a server slice must agree this well
NOISY_PCT = 10.0  # other processes' CPU (% of one core) above which a figure is flagged
BOTH_SIDES = ("before", "after")  # the in-process slices around a server slice
REFERENCE_SIDES = ("layout_before", "layout_after")  # the same, in the second layout


def median_of_kept(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.median(kept)) if kept else None


def paired(
    slices: list[dict], ref_key: str, server_value, combine, sides: tuple[str, str] = BOTH_SIDES
) -> tuple[list[float], list[float], int]:
    """(figures of stable pairs, of all pairs, number unstable) for one level's slices.

    A pair is stable when the in-process slices before and after the server
    slice (``sides``: their keys) agree within STABLE_TOLERANCE: the host did not
    change speed meanwhile.
    """
    stable, every = [], []
    for sl in slices:
        before, after = sl[sides[0]][ref_key], sl[sides[1]][ref_key]
        reference = (before + after) / 2
        value = server_value(sl["server"])
        if value is None:
            continue
        figure = combine(value, reference)
        every.append(figure)
        if abs(before - after) <= STABLE_TOLERANCE * reference:
            stable.append(figure)
    return stable, every, len(every) - len(stable)


def cpu_per_image(slices: list[dict], cores: int) -> dict[str, float | None]:
    """Where the machine's CPU goes, in CPU milliseconds per image (medians over slices).

    ``inprocess``: ONNX Runtime alone. ``server`` splits into its event-loop thread
    (every request's Python work) and the rest (compute threads and gRPC's core
    threads); ``compute_over_inprocess`` is that rest against ``inprocess``: how much
    more CPU the same inferences cost when they share the cores with request handling
    and the client; ``layout_reference_ms``/``compute_over_layout_reference``: the same
    against the second layout in process, where it was measured. ``idle_pct``: the machine's
    unused CPU, % of all its cores.
    """

    def per_image(pct: float | None, throughput: float) -> float | None:
        return None if pct is None or not throughput else 10 * pct / throughput

    def med(get) -> float | None:
        return median_of_kept([get(sl) for sl in slices])

    def ref(sl: dict, sides: tuple[str, str] = BOTH_SIDES) -> float | None:
        if sides[0] not in sl:
            return None
        a, b = (per_image(sl[k].get("own_cpu_pct"), sl[k]["throughput"]) for k in sides)
        return None if a is None or b is None else (a + b) / 2

    def srv(key: str):
        return lambda sl: per_image(sl["server"].get(key), sl["server"]["throughput"])

    def rest(sl: dict) -> float | None:
        total, loop = srv("server_cpu_pct")(sl), srv("server_loop_cpu_pct")(sl)
        return None if total is None or loop is None else total - loop

    def over(sl: dict, sides: tuple[str, str] = BOTH_SIDES) -> float | None:
        r, base = rest(sl), ref(sl, sides)
        return None if r is None or not base else r / base - 1

    def idle(sl: dict) -> float | None:
        used = sl["server"].get("machine_cpu_pct")
        return None if used is None else max(0.0, 100.0 - used / cores)

    return {
        "inprocess_ms": med(ref),
        "server_ms": med(srv("server_cpu_pct")),
        "server_loop_ms": med(srv("server_loop_cpu_pct")),
        "server_other_threads_ms": med(rest),
        "compute_over_inprocess": med(over),
        # the same against the second layout in process (cli.reference_layout), where measured
        "layout_reference_ms": med(lambda sl: ref(sl, REFERENCE_SIDES)),
        "compute_over_layout_reference": med(lambda sl: over(sl, REFERENCE_SIDES)),
        "client_ms": med(srv("client_cpu_pct")),
        "idle_pct": med(idle),
    }


_SERVER_KEYS = (  # the server's own figures (its metrics), medians per level
    "batching_efficiency",
    "queue_ms_mean",
    "compute_ms_mean",
    "request_ms_mean",
    "compute_busy_pct",
)
_CPU_KEYS = (
    "client_cpu_pct",
    "server_cpu_pct",
    "server_loop_cpu_pct",
    "other_cpu_pct",
    "machine_cpu_pct",
)


def summarize_variant(
    variant: str, rounds: list[dict[int, dict]], best: int, cores: int | None = None
) -> dict:
    """Medians over the stable pairs of each level (over all pairs when none is stable)."""
    cores = cores or os.cpu_count() or 1
    out: dict = {"server_args": variant, "rounds": len(rounds), "best_inprocess_batch": best}
    if not rounds:
        return out
    levels = list(rounds[0])
    top = max(levels)

    def slices(n: int) -> list[dict]:
        return [levels_[n] for levels_ in rounds]

    base = _ratio_figures(slices(top), BOTH_SIDES)
    out.update(
        {
            "best_inprocess_throughput": base["throughput"],
            "concurrency": top,
            "server_throughput": _server_median(slices(top), lambda row: row["throughput"]),
            "throughput_ratio": base["ratio"],
            "throughput_ratio_range": base["ratio_range"],
            "throughput_pairs": base["pairs"],
            "throughput_target_met": base["target_met"],
            "batching_efficiency": _server_median(
                slices(top), lambda row: (row["server"] or {}).get("batching_efficiency")
            ),
            "levels": {str(n): _level_figures(slices(n)) for n in levels},
            "noisy": _noisy(rounds),  # slices during which others took > NOISY_PCT of a core
            "cpu_per_image": cpu_per_image(slices(top), cores),
        }
    )
    if all(REFERENCE_SIDES[0] in sl for sl in slices(top)):
        out["layout_reference"] = _ratio_figures(slices(top), REFERENCE_SIDES)
    if 1 in levels:
        out.update(_latency_figures(slices(1), out["levels"]["1"]["p50_ms"]))
    return out


def _server_median(slices: list[dict], get: Callable[[dict], float | None]) -> float | None:
    """The median of ``get`` over the slices' server rows."""
    return median_of_kept([get(sl["server"]) for sl in slices])


def _level_figures(slices: list[dict]) -> dict:
    """One concurrency level: the server's latency, throughput, errors, metrics and CPU."""
    return {
        "p50_ms": _server_median(slices, lambda row: (row["latency"] or {}).get("p50_ms")),
        "p99_ms": _server_median(slices, lambda row: (row["latency"] or {}).get("p99_ms")),
        "throughput": _server_median(slices, lambda row: row["throughput"]),
        "errors": sum(sl["server"]["error_count"] for sl in slices),
        **{
            key: _server_median(slices, lambda row, k=key: (row["server"] or {}).get(k))
            for key in _SERVER_KEYS
        },
        **{key: _server_median(slices, lambda row, k=key: row.get(k)) for key in _CPU_KEYS},
    }


def _noisy(rounds: list[dict[int, dict]]) -> list[str]:
    """The server and in-process slices during which other processes took the CPU."""
    return [
        f"round {r + 1} c={n} {part}"
        for r, levels_ in enumerate(rounds)
        for n, sl in levels_.items()
        for part, row in (("server", sl["server"]), ("in-process", sl["before"]))
        if (row.get("other_cpu_pct") or 0) > NOISY_PCT
    ]


def _latency_figures(slices: list[dict], server_single_p50_ms: float | None) -> dict:
    """Single-stream p50 against in-process batch 1 (nothing when no pair has figures)."""
    stable, every, unstable = paired(
        slices,
        "p50_ms",
        lambda row: (row["latency"] or {}).get("p50_ms"),
        lambda v, ref: v - ref,
    )
    diffs = stable or every
    if not diffs:
        return {}
    overhead = median_of_kept(diffs)
    return {
        "inprocess_b1_p50_ms": median_of_kept(
            [(sl["before"]["p50_ms"] + sl["after"]["p50_ms"]) / 2 for sl in slices]
        ),
        "server_single_p50_ms": server_single_p50_ms,
        "p50_overhead_ms": overhead,
        "p50_overhead_range_ms": [min(diffs), max(diffs)],
        "latency_pairs": {"stable": len(stable), "unstable": unstable},
        "latency_target_met": overhead <= LATENCY_TARGET_MS,
    }


def _ratio_figures(slices: list[dict], sides: tuple[str, str]) -> dict:
    """Server throughput against the in-process slices named by ``sides`` (the one-session
    baseline, or the second layout): medians over the stable pairs."""
    stable, every, unstable = paired(
        slices, "throughput", lambda row: row["throughput"], lambda v, ref: v / ref, sides
    )
    ratios = stable or every
    ratio = median_of_kept(ratios)
    return {
        "throughput": median_of_kept(
            [(sl[sides[0]]["throughput"] + sl[sides[1]]["throughput"]) / 2 for sl in slices]
        ),
        "ratio": ratio,
        "ratio_range": [min(ratios), max(ratios)] if ratios else None,
        "pairs": {"stable": len(stable), "unstable": unstable},
        "target_met": (ratio or 0) >= THROUGHPUT_TARGET,
    }


def _pairs(count: dict) -> str:
    if count["stable"]:
        return f"{count['stable']} stable pairs, {count['unstable']} left out"
    return f"{count['unstable']} pairs, NONE stable"


def report(summary: dict) -> None:
    print(
        f"\nserver args: {summary['server_args'] or '(defaults)'};"
        f" inputs: {summary.get('inputs', 'raw')}"
    )
    if summary["rounds"] == 0:
        print("  no rounds")
        return
    if "p50_overhead_ms" in summary:
        _report_latency(summary)
    _report_throughput(summary)
    ref = summary.get("layout_reference")
    if ref and ref.get("ratio") is not None:
        lo, hi = ref["ratio_range"]
        label = "same layout" if ref.get("server_layout") else f"{ref.get('name')} layout"
        print(
            f"  {label + ' in process':<25}{ref['throughput']:8.1f} img/s"
            f" ({ref.get('name')}, batch {ref.get('best_batch')}): ratio {ref['ratio']:.3f}"
            f" (median of {_pairs(ref['pairs'])}, range {lo:.3f}..{hi:.3f};"
            f" >= {THROUGHPUT_TARGET}: {'met' if ref['target_met'] else 'MISSED'})"
        )
    cpu = summary.get("cpu_per_image") or {}
    if cpu.get("server_loop_ms") is not None and cpu.get("inprocess_ms") is not None:
        over = cpu["compute_over_inprocess"]
        print(
            f"  CPU per image, c={summary['concurrency']}: in-process {cpu['inprocess_ms']:.2f} ms;"
            f" server {cpu['server_ms']:.2f} ms = event loop {fmt(cpu['server_loop_ms'])}"
            f" + compute and gRPC threads {fmt(cpu['server_other_threads_ms'])}"
            f" ({fmt(None if over is None else 100 * over, '+.0f')}% over in-process);"
            f" client {fmt(cpu['client_ms'])} ms; machine idle {fmt(cpu['idle_pct'], '.0f')}%"
        )
    if summary["noisy"]:
        print(
            f"  WARNING: other processes took > {NOISY_PCT:.0f}% of a core during "
            + ", ".join(summary["noisy"])
        )


def _report_latency(summary: dict) -> None:
    ok = "met" if summary["latency_target_met"] else "MISSED"
    lo, hi = summary["p50_overhead_range_ms"]
    print(
        f"  in-process batch-1 p50   {summary['inprocess_b1_p50_ms']:8.2f} ms\n"
        f"  server single-stream p50 {summary['server_single_p50_ms']:8.2f} ms\n"
        f"  difference               {summary['p50_overhead_ms']:+8.2f} ms"
        f" (median of {_pairs(summary['latency_pairs'])}, range {lo:+.2f}..{hi:+.2f};"
        f" target <= +{LATENCY_TARGET_MS} ms: {ok})"
    )


def _report_throughput(summary: dict) -> None:
    ok = "met" if summary["throughput_target_met"] else "MISSED"
    lo, hi = summary["throughput_ratio_range"]
    top = summary["levels"][str(summary["concurrency"])]
    print(
        f"  best in-process          {summary['best_inprocess_throughput']:8.1f} img/s"
        f" at batch {summary['best_inprocess_batch']}\n"
        f"  server, {summary['concurrency']} clients       "
        f"{summary['server_throughput']:8.1f} img/s\n"
        f"  ratio                    {summary['throughput_ratio']:8.3f}"
        f"    (median of {_pairs(summary['throughput_pairs'])}, range {lo:.3f}..{hi:.3f};"
        f" target >= {THROUGHPUT_TARGET}: {ok})\n"
        f"  batching efficiency      {summary['batching_efficiency'] or 0:8.2f} images/batch"
        f" (queue {top['queue_ms_mean'] or 0:.2f} ms, compute {top['compute_ms_mean'] or 0:.2f}"
        f" ms per batch, server e2e {top['request_ms_mean'] or 0:.2f} ms)\n"
        "  client CPU               "
        + ", ".join(f"c={k}: {v['client_cpu_pct']:.1f}%" for k, v in summary["levels"].items())
        + "\n  server CPU               "
        + ", ".join(f"c={k}: {v['server_cpu_pct'] or 0:.0f}%" for k, v in summary["levels"].items())
    )
