"""``python -m exporter``: list the zoo, export models, classify with an export."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from exporter.calibration import SAMPLES, CalibrationError, image_files
from exporter.ensemble import COMBINATIONS
from exporter.macs import count_macs, count_params
from exporter.onnx_export import OnnxOptions, ParityError
from exporter.pipeline import ExportRequest, export_model
from exporter.precision import PRECISIONS, RUNTIMES, PrecisionError, PrecisionOptions
from exporter.predict import predict
from exporter.registry import (
    UnknownModelError,
    aliases,
    build_model,
    get_cfg,
    list_models,
    resolve_name,
)
from exporter.trt_build import TensorRTBuildError
from exporter.weights import WeightsError
from modelrepo import keys
from modelrepo.files import RepositoryError
from modelrepo.serving import DEFAULT, KINDS, ServingConfig

console = Console(stderr=True, soft_wrap=True)


def zoo_rows() -> list[dict]:
    """One row per model: built on the meta device, so sizing the zoo costs seconds."""
    import torch

    rows = []
    for name in list_models():
        cfg = get_cfg(name)
        with torch.device("meta"):
            model = build_model(name)
        rows.append(
            {
                "name": name,
                "family": cfg.family,
                "year": cfg.year,
                "source": cfg.source,
                "params": count_params(model),
                "gmacs": round(count_macs(model, cfg.input_size) / 1e9, 4),
                "input_size": list(cfg.input_size),
                "dynamic_hw": not cfg.fixed_input_size,
                "published_top1": cfg.published_top1,
                "default_weights": cfg.default_weights,
            }
        )
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    rows = zoo_rows()
    if args.format == "json":
        print(json.dumps({"models": rows, "aliases": aliases()}, indent=2))
        return 0
    table = Table(title="Model zoo (params and GMACs measured; top-1 as published)")
    for col in ("name", "family", "year", "params", "GMACs", "input", "top-1 %", "weights"):
        table.add_column(col, justify="right" if col in ("params", "GMACs", "top-1 %") else "left")
    for r in rows:
        c, h, w = r["input_size"]
        table.add_row(
            r["name"],
            r["family"],
            str(r["year"]),
            f"{r['params'] / 1e6:.2f}M",
            f"{r['gmacs']:.3g}",
            f"{c}x{h}x{w}" + ("" if r["dynamic_hw"] else " fixed"),
            "-" if r["published_top1"] is None else f"{r['published_top1']:.1f}",
            r["default_weights"],
        )
    Console(width=140).print(table)
    alias_text = ", ".join(f"{a}->{t}" for a, t in sorted(aliases().items()))
    print(f"aliases: {alias_text}")
    return 0


def _request(args: argparse.Namespace, model: str):

    serving = ServingConfig(
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=tuple(args.preferred_batch_size),
        max_queue_delay_us=args.max_queue_delay_us,
        instance_count=args.instances,
        instance_kind=args.instance_kind,
    )
    if args.calibration and args.calibration != SAMPLES:
        image_files(Path(args.calibration))  # a missing or empty folder fails before any work
    precision = PrecisionOptions(
        precision=args.precision,
        backend=args.backend,
        calibration=args.calibration,
        calibration_limit=args.calibration_limit,
        min_agreement=args.min_agreement,
        int8_full_range=args.int8_full_range,
        workspace_mib=args.workspace_mib,
        timing_cache=args.timing_cache,
    )
    return ExportRequest(
        model=model,
        weights=args.weights,
        repository=Path(args.repository),
        version=args.version,
        input_size=args.input_size,
        dynamic_spatial=args.dynamic_spatial,
        onnx=OnnxOptions(
            opset=args.opset, exporter=args.exporter, simplify=not args.no_simplify, seed=args.seed
        ),
        serving=serving,
        precision=precision,
        cam=not args.no_cam,
    )


def cmd_export(args: argparse.Namespace) -> int:

    names = list_models() if args.model == "all" else [resolve_name(args.model)]
    if args.model == "all" and args.version is not None:
        raise ValueError("--version cannot be combined with 'all'")
    requests = [_request(args, name) for name in names]  # validate every argument first
    failed: list[str] = []
    started = time.perf_counter()
    for i, request in enumerate(requests, 1):
        console.print(f"[bold]({i}/{len(requests)}) exporting {request.model}[/bold]")
        try:
            result = export_model(request, progress=lambda m: console.print(f"  {m}"))
        except (ParityError, WeightsError, PrecisionError, RuntimeError) as exc:
            if len(requests) == 1:
                raise
            console.print(f"  [red]failed:[/red] {exc}")
            failed.append(request.model)
            continue
        parity = result.report["parity"][0]
        gate = result.report["precision"].get("agreement")
        console.print(
            f"  [green]ok[/green] {result.path} in {result.report['export_seconds']:.1f}s, "
            f"max rel err {parity['max_rel_err']:.1e}"
            + (
                f"; {request.precision.precision} top-1 agreement with FP32 "
                f"{gate['top1_agreement']:.1%} on {gate['images']} images"
                if gate
                else ""
            )
        )
    if len(requests) > 1:
        console.print(
            f"exported {len(requests) - len(failed)}/{len(requests)} in "
            f"{time.perf_counter() - started:.0f}s" + (f"; failed: {failed}" if failed else "")
        )
    return 1 if failed else 0


def cmd_predict(args: argparse.Namespace) -> int:

    spec, predictions = predict(
        Path(args.repository), args.model, [Path(p) for p in args.images], args.top_k, args.version
    )
    trained = (
        spec.config.parameters[keys.WEIGHTS_TRAINED].string_value
        if (keys.WEIGHTS_TRAINED in spec.config.parameters)
        else "unknown"
    )
    if trained == "false":
        print(f"NOTE: {spec.name} has random weights: these predictions are meaningless")
    for pred in predictions:
        print(f"{spec.name} {pred.image}:")
        for prob, index, label in pred.top:
            print(f"  {prob:6.1%}  {index:4d}  {label}")
    return 0


def _csv(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"'{text}': {exc}") from exc

    return parse


def cmd_ensemble(args: argparse.Namespace) -> int:
    from exporter.ensemble import EnsembleRequest, export_ensemble

    request = EnsembleRequest(
        name=args.name,
        members=args.members,
        seeds=args.seeds,
        combine=args.combine,
        weights=args.weights,
        epochs=args.epochs,
        repository=Path(args.repository),
        serving=DEFAULT.changed(max_batch_size=args.max_batch_size),
    )
    export_ensemble(request, progress=lambda m: console.print(f"  {m}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m exporter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="the zoo, a row per model")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("export", help="export a model (or 'all') into a model repository")
    _add_export_target(p)
    _add_onnx_options(p)
    _add_serving_options(p)
    _add_precision_options(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("ensemble", help="member entries and one ensemble entry serving them")
    _add_ensemble_arguments(p)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("predict", help="classify image files with an exported model (ONNX Runtime)")
    p.add_argument("model")
    p.add_argument("images", nargs="+")
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--version", type=int, default=None)
    p.set_defaults(func=cmd_predict)
    return parser


def _add_export_target(p: argparse.ArgumentParser) -> None:
    """What to export, with which weights, and where to."""
    p.add_argument("model", help="a model name, a family alias, or 'all'")
    p.add_argument(
        "--weights",
        default=None,
        help="random | imagenet (download) | pretrained (offline, where shipped) | "
        "PATH to a state_dict; default: pretrained where offline weights exist, "
        "else random",
    )
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--version", type=int, default=None, help="overwrite this version")
    p.add_argument("--input-size", type=int, default=None, help="export at HxW=N")
    p.add_argument(
        "--dynamic-spatial",
        action="store_true",
        help="keep H and W dynamic (config dims [C, -1, -1]) where the model allows; default: "
        "fixed at the export size, which Triton's image_client.py reads",
    )


def _add_onnx_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument(
        "--no-cam",
        action="store_true",
        help="no class activation map data (by default written where the head is global "
        "average pooling then one linear layer: an extra ONNX output and cam_head.npz)",
    )
    p.add_argument("--seed", type=int, default=0)


def _add_serving_options(p: argparse.ArgumentParser) -> None:
    """The config.pbtxt batching and instance settings."""
    p.add_argument("--max-batch-size", type=int, default=DEFAULT.max_batch_size)
    p.add_argument(
        "--preferred-batch-size", type=int, nargs="+", default=list(DEFAULT.preferred_batch_sizes)
    )
    p.add_argument("--max-queue-delay-us", type=int, default=DEFAULT.max_queue_delay_us)
    p.add_argument("--instances", type=int, default=DEFAULT.instance_count)
    p.add_argument("--instance-kind", choices=tuple(KINDS), default=DEFAULT.instance_kind)


def _add_precision_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("precision and runtime")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32")
    g.add_argument(
        "--backend",
        choices=RUNTIMES,
        default="onnxruntime",
        help="onnxruntime: model.onnx (int8 QDQ / fp16 / fp32); tensorrt: model.plan, "
        "built on this machine's GPU",
    )
    g.add_argument(
        "--calibration",
        default=None,
        metavar="DIR",
        help="folder of real JPEG/PNG images (required for int8), or 'samples' for the "
        "photos bundled with scikit-image/scikit-learn; also the images of the precision gate",
    )
    g.add_argument("--calibration-limit", type=int, default=256, help="use at most N images")
    g.add_argument(
        "--int8-full-range",
        action="store_true",
        help="int8 weights use all 8 bits: slightly closer to FP32 on CPUs with VNNI, but "
        "x86 CPUs without it saturate and answer differently (default: 7-bit weights)",
    )
    g.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        help="gate: top-1 agreement with FP32 on the real images (fp32 TensorRT needs 1.0)",
    )
    g.add_argument("--workspace-mib", type=int, default=4096, help="TensorRT builder workspace")
    g.add_argument("--timing-cache", default=None, help="TensorRT timing cache file")


def _add_ensemble_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the ensemble's entry name, e.g. lenet5x5")
    p.add_argument("--members", type=_csv(str), required=True, help="model names, comma-separated")
    p.add_argument(
        "--seeds",
        type=_csv(int),
        default=(),
        help="train each member once per seed (lenet5): entries <model>_seed<N>",
    )
    p.add_argument("--combine", choices=COMBINATIONS, default="mean_softmax")
    p.add_argument("--weights", type=_csv(float), default=(), help="weighted_mean: one per member")
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=40, help="training epochs of seeded members")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        UnknownModelError,
        WeightsError,
        ParityError,
        RepositoryError,
        CalibrationError,
        TensorRTBuildError,
        ValueError,
        FileNotFoundError,
    ) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
