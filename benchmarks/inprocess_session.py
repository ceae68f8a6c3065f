"""The in-process side of benchmarks/serve_vs_inprocess.py: the model, its input shape,
and one ONNX Runtime session configured as the server's backend configures its own.

Kept apart from the server side so that both halves of the comparison read
plainly; this module imports onnxruntime (lazily) and, only when the model is
missing from the repository, the exporter.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_cpu_seconds
from benchmarks.stats import summarize


def ensure_exported(repository: Path, model: str) -> Path:
    """The newest model.onnx of ``model``, exporting it first when there is none."""
    model_dir = repository / model
    versions = sorted(int(p.name) for p in model_dir.glob("[0-9]*") if (p / "model.onnx").is_file())
    if not versions:
        from exporter.pipeline import ExportRequest, export_model

        print(f"exporting {model} into {repository} ...", flush=True)
        export_model(ExportRequest(model=model, repository=repository))
        versions = sorted(
            int(p.name) for p in model_dir.glob("[0-9]*") if (p / "model.onnx").is_file()
        )
    return model_dir / str(versions[-1]) / "model.onnx"


def input_shape(repository: Path, model: str) -> tuple[int, ...]:
    """One image's shape from config.pbtxt; dynamic dims take preprocess.crop_size."""
    from google.protobuf import text_format

    from protos import model_config_pb2 as mc

    config = text_format.Parse((repository / model / "config.pbtxt").read_text(), mc.ModelConfig())
    dims = list(config.input[0].dims)
    if any(d < 0 for d in dims):
        crop = int(config.parameters["preprocess.crop_size"].string_value)
        dims = [crop if d < 0 else d for d in dims]
    return tuple(dims)


class InProcess:
    """One ONNX Runtime session, intra-op threads = ``threads``, as the server's backend."""

    def __init__(self, onnx_path: Path, shape: tuple[int, ...], threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1  # as the server's backend
        self.session = ort.InferenceSession(
            str(onnx_path), opts, providers=["CPUExecutionProvider"]
        )
        self.name = self.session.get_inputs()[0].name
        self.shape = shape
        self.threads = threads

    def measure(self, batch: int, seconds: float, warmup_runs: int = 3) -> dict:
        """p50 latency and images/s at ``batch`` over ``seconds`` (at least 10 runs)."""
        x = np.random.default_rng(0).standard_normal((batch, *self.shape), dtype=np.float32)
        feed = {self.name: x}
        for _ in range(warmup_runs):
            self.session.run(None, feed)
        times: list[float] = []
        own0, all0 = time.process_time(), machine_cpu_seconds()
        started = time.perf_counter()
        while len(times) < 10 or time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            self.session.run(None, feed)
            times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        own1, all1 = time.process_time(), machine_cpu_seconds()
        stats = summarize(times, batch)
        other = None
        if all0 is not None and all1 is not None:  # CPU other processes took meanwhile
            other = 100 * ((all1 - all0) - (own1 - own0)) / elapsed
        return {
            "batch": batch,
            "threads": self.threads,
            "runs": stats.runs,
            "p50_ms": stats.p50_ms,
            "p90_ms": stats.p90_ms,
            "p99_ms": stats.p99_ms,
            "mean_ms": stats.mean_ms,
            "throughput": batch * len(times) / elapsed,
            "own_cpu_pct": 100 * (own1 - own0) / elapsed,
            "other_cpu_pct": other,
        }

    def close(self) -> None:
        del self.session
        gc.collect()


def inproc_line(row: dict) -> str:
    return (
        f"in process b={row['batch']:<2} p50 {row['p50_ms']:7.2f} ms"
        f" {row['throughput']:6.1f} img/s ({row['runs']} runs,"
        f" others {row['other_cpu_pct'] or 0:.0f}%)"
    )
