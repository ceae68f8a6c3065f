"""In-process latency: PyTorch eager vs ONNX Runtime, per model and batch size.

    python benchmarks/latency.py --models mobilenet_v2,efficientnet_b0,resnet50 \
        --backends torch,onnxruntime --batch-sizes 1,8 --out results/

Models missing from --repository are exported first (their export time is
reported from export.json). Each (model, backend, batch) gets a warm-up and
then timed runs until both --min-runs and --seconds are reached; results are
printed as a table and written to <out>/latency.csv and latency.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stats import summarize  # noqa: E402

Runner = Callable[[np.ndarray], np.ndarray]
BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class BenchCfg:
    models: tuple[str, ...]
    backends: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    threads: int
    warmup: int
    min_runs: int
    seconds: float
    repository: Path
    out: Path


def _ensure_exported(name: str, repository: Path) -> dict:
    from exporter.pipeline import ExportRequest, export_model
    from exporter.registry import resolve_name

    name = resolve_name(name)
    model_dir = repository / name
    versions = sorted(int(p.name) for p in model_dir.glob("[0-9]*") if p.is_dir())
    if not versions:
        export_model(ExportRequest(model=name, repository=repository), progress=lambda m: None)
        versions = [1]
    return json.loads((model_dir / str(versions[-1]) / "export.json").read_text())


def _torch_runner(report: dict, threads: int) -> Runner:
    import torch

    from exporter.weights import load_with_weights

    torch.set_num_threads(threads)
    weights = report["weights"]
    spec = weights["file"] if weights["kind"] == "file" else weights["kind"]
    model, _ = load_with_weights(
        report["model"],
        spec,
        seed=weights.get("seed") or 0,
        input_size=tuple(report["input"]["exported_at_size"]),
    )

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def _ort_runner(onnx_path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x})[0]


def _time(run: Runner, x: np.ndarray, cfg: BenchCfg) -> list[float]:
    for _ in range(cfg.warmup):
        run(x)
    times: list[float] = []
    deadline = time.perf_counter() + cfg.seconds
    while len(times) < cfg.min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return times


def benchmark(cfg: BenchCfg, log: Callable[[str], None] = print) -> list[dict]:
    rows: list[dict] = []
    for name in cfg.models:
        report = _ensure_exported(name, cfg.repository)
        onnx_path = cfg.repository / report["model"] / str(report["version"]) / "model.onnx"
        runners = {
            "torch": lambda r=report: _torch_runner(r, cfg.threads),
            "onnxruntime": lambda p=onnx_path: _ort_runner(p, cfg.threads),
        }
        size = report["input"]["exported_at_size"]
        for batch in cfg.batch_sizes:
            x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
            reference: np.ndarray | None = None
            for backend in cfg.backends:
                run = runners[backend]()
                out = run(x)
                reference = out if reference is None else reference
                stats = summarize(_time(run, x, cfg), batch)
                row = {
                    "model": report["model"],
                    "backend": backend,
                    "batch": batch,
                    "threads": cfg.threads,
                    **asdict(stats),
                    "top1_matches_first_backend": bool(
                        (out.argmax(1) == reference.argmax(1)).all()
                    ),
                    "params": report["params"],
                    "gmacs": report["gmacs"],
                    "export_seconds": report["export_seconds"],
                }
                rows.append(row)
                log(
                    f"{row['model']:>18} {backend:>12} b={batch:<3} p50 {stats.p50_ms:8.2f} ms "
                    f"p90 {stats.p90_ms:8.2f} ms {stats.throughput:8.1f} img/s ({stats.runs} runs)"
                )
    return rows


def machine() -> dict:
    from importlib import metadata

    libs = {}
    for lib in ("torch", "onnxruntime", "numpy"):
        try:
            libs[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            libs[lib] = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), **libs}


def write(rows: list[dict], out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "latency.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "latency.json").write_text(json.dumps({"machine": meta, "results": rows}, indent=2))


def speedups(rows: list[dict]) -> list[str]:
    """ONNX Runtime p50 vs PyTorch p50, per model and batch."""
    lines = []
    keyed = {(r["model"], r["batch"], r["backend"]): r for r in rows}
    for (model, batch, backend), row in keyed.items():
        torch_row = keyed.get((model, batch, "torch"))
        if backend == "onnxruntime" and torch_row:
            ratio = torch_row["p50_ms"] / row["p50_ms"]
            lines.append(
                f"{model} batch {batch}: ONNX Runtime {ratio:.2f}x PyTorch "
                f"({row['p50_ms']:.2f} vs {torch_row['p50_ms']:.2f} ms p50)"
            )
    return lines


def parse_args(argv: list[str] | None = None) -> BenchCfg:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="mobilenet_v2,efficientnet_b0,resnet50")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--batch-sizes", default="1")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--min-runs", type=int, default=20)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--out", default="results")
    a = p.parse_args(argv)
    backends = tuple(b for b in a.backends.split(",") if b)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        p.error(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    try:
        batches = tuple(int(b) for b in a.batch_sizes.split(","))
    except ValueError:
        p.error(f"--batch-sizes '{a.batch_sizes}' must be comma-separated integers")
    if any(b < 1 for b in batches) or a.threads < 1 or a.min_runs < 1:
        p.error("batch sizes, --threads and --min-runs must be >= 1")
    return BenchCfg(
        models=tuple(m for m in a.models.split(",") if m),
        backends=backends,
        batch_sizes=batches,
        threads=a.threads,
        warmup=a.warmup,
        min_runs=a.min_runs,
        seconds=a.seconds,
        repository=Path(a.repository),
        out=Path(a.out),
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    meta = machine()
    print(f"machine: {meta}")
    rows = benchmark(cfg)
    write(rows, cfg.out, meta)
    for line in speedups(rows):
        print(line)
    print(f"wrote {cfg.out / 'latency.csv'} and {cfg.out / 'latency.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
