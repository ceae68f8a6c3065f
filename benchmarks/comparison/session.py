"""The in-process side of benchmarks/serve_vs_inprocess.py: the model, its input shape,
and one ONNX Runtime session configured as the server's backend configures its own.

Kept apart from the server side so that both halves of the comparison read
plainly; this module imports onnxruntime (lazily) and, only when the model is
missing from the repository, the exporter.
"""

from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common.machine import machine_cpu_seconds
from benchmarks.common.stats import summarize
from benchmarks.comparison.compare import median_of_kept
from modelrepo.files import read_config
from modelrepo.serving import read_serving
from modelrepo.spec import image_dims


def ensure_exported(repository: Path, model: str) -> Path:
    """The newest model.onnx of ``model``, exporting it first when there is none."""
    model_dir = repository / model
    versions = sorted(int(p.name) for p in model_dir.glob("[0-9]*") if (p / "model.onnx").is_file())
    if not versions:
        from exporter.pipeline import ExportRequest, export_model  # torch: only to export

        print(f"exporting {model} into {repository} ...", flush=True)
        export_model(ExportRequest(model=model, repository=repository))
        versions = sorted(
            int(p.name) for p in model_dir.glob("[0-9]*") if (p / "model.onnx").is_file()
        )
    return model_dir / str(versions[-1]) / "model.onnx"


def instance_count(repository: Path, model: str) -> int:
    """Model instances config.pbtxt asks for (the server's default layout)."""
    return read_serving(read_config(repository / model)).instance_count


def input_shape(repository: Path, model: str) -> tuple[int, ...]:
    """One image's shape from config.pbtxt (dynamic dims take the crop size)."""
    return image_dims(read_config(repository / model))


class InProcess:
    """``sessions`` ONNX Runtime sessions of ``threads`` intra-op threads each, configured
    as the server's backend configures its own: one session is the plain in-process
    baseline, several (each driven by its own thread) mirror a server with that many
    model instances, so a layout can be compared with itself in process."""

    def __init__(
        self, onnx_path: Path, shape: tuple[int, ...], threads: int, sessions: int = 1
    ) -> None:
        import onnxruntime as ort

        if sessions < 1 or threads < 1:
            raise ValueError(f"sessions={sessions}, threads={threads}: both must be >= 1")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1  # as the server's backend
        self.sessions = [
            ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
            for _ in range(sessions)
        ]
        self.name = self.sessions[0].get_inputs()[0].name
        self.logits = [self.sessions[0].get_outputs()[0].name]  # as the server: no CAM map
        self.shape = shape
        self.threads = threads

    @property
    def layout(self) -> str:
        return f"{len(self.sessions)}x{self.threads}"

    def measure(self, batch: int, seconds: float, warmup_runs: int = 3) -> dict:
        """p50 latency and images/s at ``batch`` over ``seconds`` (at least 10 runs each),
        every session running back to back in its own thread."""
        x = np.random.default_rng(0).standard_normal((batch, *self.shape), dtype=np.float32)
        feed = {self.name: x}
        for session in self.sessions:
            for _ in range(warmup_runs):
                session.run(self.logits, feed)
        times: list[list[float]] = [[] for _ in self.sessions]
        own0, all0 = time.process_time(), machine_cpu_seconds()
        started = time.perf_counter()

        def drive(i: int) -> None:
            session, mine = self.sessions[i], times[i]
            while len(mine) < 10 or time.perf_counter() - started < seconds:
                t0 = time.perf_counter()
                session.run(self.logits, feed)
                mine.append(time.perf_counter() - t0)

        if len(self.sessions) == 1:
            drive(0)
        else:
            with ThreadPoolExecutor(len(self.sessions)) as pool:
                list(pool.map(drive, range(len(self.sessions))))
        elapsed = time.perf_counter() - started
        own1, all1 = time.process_time(), machine_cpu_seconds()
        every = [t for mine in times for t in mine]
        stats = summarize(every, batch)
        other = None
        if all0 is not None and all1 is not None:  # CPU other processes took meanwhile
            other = 100 * ((all1 - all0) - (own1 - own0)) / elapsed
        return {
            "batch": batch,
            "threads": self.threads,
            "sessions": len(self.sessions),
            "runs": stats.runs,
            "p50_ms": stats.p50_ms,
            "p90_ms": stats.p90_ms,
            "p99_ms": stats.p99_ms,
            "mean_ms": stats.mean_ms,
            "throughput": batch * len(every) / elapsed,
            "own_cpu_pct": 100 * (own1 - own0) / elapsed,
            "other_cpu_pct": other,
        }

    def close(self) -> None:
        self.sessions.clear()
        gc.collect()


def inproc_line(row: dict) -> str:
    return (
        f"in process {row.get('sessions', 1)}x{row['threads']} b={row['batch']:<2}"
        f" p50 {row['p50_ms']:7.2f} ms"
        f" {row['throughput']:6.1f} img/s ({row['runs']} runs,"
        f" others {row['other_cpu_pct'] or 0:.0f}%)"
    )


def sweep(
    inproc: InProcess, batch_sizes: list[int], passes_n: int, seconds: float
) -> tuple[list[dict], int]:
    """Interleaved passes over ``batch_sizes`` (a slow phase hits every size); the rows
    (median p50 and images/s per size) and the size of best throughput."""
    passes: dict[int, list[dict]] = {b: [] for b in batch_sizes}
    for _ in range(passes_n):
        for batch in batch_sizes:
            passes[batch].append(inproc.measure(batch, seconds))
            print("  " + inproc_line(passes[batch][-1]), flush=True)
    rows = [
        {
            "batch": b,
            "p50_ms": median_of_kept([r["p50_ms"] for r in runs]),
            "throughput": median_of_kept([r["throughput"] for r in runs]),
            "passes": runs,
        }
        for b, runs in passes.items()
    ]
    best = max(rows, key=lambda r: r["throughput"])["batch"]
    print(
        f"  {inproc.layout} median throughput: "
        + ", ".join(f"b={r['batch']} {r['throughput']:.1f}" for r in rows)
        + f" img/s -> best batch {best}",
        flush=True,
    )
    return rows, best
