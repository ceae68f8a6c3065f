"""``make gpu-check``: everything GPU, end to end, on a machine with an NVIDIA GPU.

    python -m devtools.gpu_check [--models mobilenet_v2,efficientnet_b0,resnet50]
                                 [--out results/gpu-check] [--batch-sizes 1,8]

1. preflight: a usable GPU, TensorRT, cuda-bindings, and onnxruntime-gpu's
   CUDA and TensorRT execution providers; without them it stops at once with
   exit code 2 and says what is missing (it never "passes" by skipping);
2. exports each model to an FP16 TensorRT engine (a new version holding
   model.plan and the model.onnx it was built from; the export's own gate
   compares the engine with the FP32 ONNX on the bundled photos);
3. serves the repository with ``python -m server`` and compares the engines'
   logits over gRPC with ONNX Runtime FP32 in process, photo by photo;
4. runs ``pytest -m gpu``;
5. runs ``benchmarks/latency.py`` with the backends onnxruntime-cuda,
   onnxruntime-tensorrt and tensorrt on the same repository;
6. prints one summary table; exits 1 if any step failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from client import InferenceClient
from devtools.launch import launch
from engines.gpu import unavailable_reason
from modelrepo.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_MODELS = ("mobilenet_v2", "efficientnet_b0", "resnet50")
GPU_BACKENDS = ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")


def preflight() -> list[str]:
    """What this machine lacks for the GPU check (empty: ready)."""
    missing = []
    reason = unavailable_reason(need_tensorrt=True)
    if reason:
        missing.append(reason)
    try:
        import onnxruntime as ort

        have = ort.get_available_providers()
        for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            if provider not in have:
                missing.append(
                    f"onnxruntime {ort.__version__} has no {provider} (has {have}): "
                    "run `make gpu-setup` to install onnxruntime-gpu in place of onnxruntime"
                )
    except ImportError as exc:
        missing.append(f"onnxruntime is not installed: {exc}")
    return missing


def export_engines(models: list[str], repository: Path) -> list[dict[str, Any]]:
    # The exporter brings torch: imported only once the preflight has passed.
    from exporter.pipeline import ExportRequest, export_model
    from exporter.precision import PrecisionOptions

    rows = []
    for name in models:
        row: dict[str, Any] = {"step": "export fp16 engine", "model": name}
        try:
            result = export_model(
                ExportRequest(
                    model=name,
                    repository=repository,
                    version=1,
                    precision=PrecisionOptions(precision="fp16", backend="tensorrt"),
                ),
                progress=lambda m: print(f"  {m}", flush=True),
            )
            gate, built = result.report["precision"]["agreement"], result.report["tensorrt"]
            row.update(
                ok=True,
                detail=f"TensorRT {built['version']} on {built['gpu']['name']}, build "
                f"{built['build_seconds']:.0f}s, top-1 vs FP32 {gate['top1_agreement']:.0%} "
                f"on {gate['images']} photos, rel err {gate['max_rel_err']:.1e}",
            )
        except Exception as exc:  # reported in the table; the other models go on
            row.update(ok=False, detail=f"{type(exc).__name__}: {exc}")
        rows.append(row)
    return rows


def serve_and_compare(models: list[str], repository: Path, out: Path) -> list[dict[str, Any]]:
    """Serve the engines; their logits over gRPC vs ONNX Runtime FP32 on the same photos."""
    # Late like export_engines: the preflight must answer without the exporter's imports.
    from exporter.calibration import sample_photos
    from exporter.optimize import ort_logits
    from exporter.precision import compare

    rows = []
    try:
        server = launch(repository, log=out / "server.log", timeout=600)
    except Exception as exc:
        return [{"step": "serve engines", "model": "-", "ok": False, "detail": str(exc)[-2000:]}]
    try:
        with InferenceClient(server.url) as client:
            for name in models:
                row: dict[str, Any] = {"step": "serve over gRPC", "model": name}
                try:
                    spec = load_spec(repository / name)
                    photos = sample_photos(spec.preprocess)
                    got = client.infer(name, photos.x)
                    ref = ort_logits(spec.version_dir() / "model.onnx", photos.x)
                    gate = compare(ref, got, photos.names, min_agreement=0.99)
                    row.update(
                        ok=gate.passed,
                        detail=f"top-1 vs ONNX FP32 {gate.top1_agreement:.0%} on {gate.images} "
                        f"photos, rel err {gate.max_rel_err:.1e} {gate.reason}".strip(),
                    )
                except Exception as exc:
                    row.update(ok=False, detail=f"{type(exc).__name__}: {exc}")
                rows.append(row)
    finally:
        code = server.terminate()
    rows.append({"step": "server stopped", "model": "-", "ok": code == 0, "detail": f"exit {code}"})
    return rows


def run_step(step: str, cmd: list[str], log: Path) -> dict[str, Any]:
    print(f"$ {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, text=True)
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    return {
        "step": step,
        "model": "-",
        "ok": proc.returncode == 0,
        "detail": f"exit {proc.returncode} in {time.perf_counter() - started:.0f}s: {tail[0]} "
        f"(log {log})",
    }


def latency_rows(path: Path) -> list[dict[str, Any]]:
    """p50 per model/backend/precision/batch from latency.py's latency.json."""
    try:
        results = json.loads(path.read_text()).get("results", [])
    except (OSError, ValueError):
        return []
    return [r for r in results if r.get("backend") in GPU_BACKENDS]


def print_summary(rows: list[dict[str, Any]], latency: list[dict[str, Any]]) -> None:

    console = Console(width=160)
    table = Table(title="GPU check")
    for col in ("step", "model", "result", "detail"):
        table.add_column(col)
    for r in rows:
        ok = "[green]ok[/green]" if r["ok"] else "[red]FAILED[/red]"
        table.add_row(r["step"], r["model"], ok, r["detail"])
    console.print(table)
    if latency:
        lat = Table(title="Latency (in process; p50 ms, images/s)")
        for col in ("model", "backend", "precision", "batch", "p50 ms", "images/s", "status"):
            lat.add_column(col)
        for r in latency:
            p50, ips = r.get("p50_ms"), r.get("throughput")
            lat.add_row(
                str(r.get("model")),
                str(r.get("backend")),
                str(r.get("precision")),
                str(r.get("batch") or "-"),
                "-" if p50 is None else f"{p50:.2f}",
                "-" if ips is None else f"{ips:.0f}",
                str(r.get("status")) + (f": {r['reason']}" if r.get("reason") else ""),
            )
        console.print(lat)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu-check")
    p.add_argument("--batch-sizes", default="1,8")
    args = p.parse_args(argv)
    missing = preflight()
    if missing:
        print("GPU CHECK FAILED: this machine cannot run the GPU paths:", file=sys.stderr)
        for line in missing:
            print(f"  - {line}", file=sys.stderr)
        print("Run it on a host with an NVIDIA GPU after `make gpu-setup`.", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    out = args.out.resolve()
    repository = out / "repository"
    out.mkdir(parents=True, exist_ok=True)
    rows = export_engines(models, repository)
    built = [r["model"] for r in rows if r["ok"]]
    if built:
        rows += serve_and_compare(built, repository, out)
    rows.append(
        run_step(
            "pytest -m gpu", [sys.executable, "-m", "pytest", "-m", "gpu", "-q"], out / "pytest.log"
        )
    )
    bench = out / "latency"
    rows.append(
        run_step(
            "latency.py",
            [sys.executable, "benchmarks/latency.py", "--models", ",".join(built or models),
             "--backends", ",".join(GPU_BACKENDS), "--precisions", "fp32,fp16",
             "--batch-sizes", args.batch_sizes, "--repository", str(repository),
             "--out", str(bench), "--no-charts"],
            out / "latency.log",
        )
    )  # fmt: skip
    latency = latency_rows(bench / "latency.json")
    print_summary(rows, latency)
    (out / "gpu_check.json").write_text(json.dumps({"steps": rows, "latency": latency}, indent=2))
    failed = [f"{r['step']} {r['model']}" for r in rows if not r["ok"]]
    if failed:
        print(f"GPU CHECK FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("GPU check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
