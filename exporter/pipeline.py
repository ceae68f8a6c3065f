"""One export, start to finish: build -> weights -> ONNX -> check -> parity -> repository.

Every stage reports through a ``progress`` callback (stage lines on the CLI),
and nothing reaches the repository unless every stage passed.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from torch import nn

from engines.gpu import unavailable_reason
from exporter import cam, onnx_export, optimize
from exporter.config import ModelCfg
from exporter.labels import labels_for
from exporter.macs import count_macs, count_params
from exporter.precision import PrecisionError, PrecisionOptions
from exporter.registry import get_cfg
from exporter.triton_config import model_config
from exporter.trt_build import engine_config
from exporter.weights import Provenance, file_sha256, load_with_weights
from modelrepo import files, keys
from modelrepo.serving import ServingConfig
from modelrepo.spec import preprocess_from

Progress = Callable[[str], None]

_LIBRARIES = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxscript", "onnxslim")


@dataclass(frozen=True)
class ExportRequest:
    model: str
    weights: str | None = None  # None: the model's default
    repository: Path = Path("model_repository")
    version: int | None = None  # None: next free version
    input_size: int | None = None  # H=W to export at; None: the model's own
    # Dynamic H/W (config dims [C, -1, -1]) where the model allows; by default H and W are
    # fixed at the export size, as Triton's image_client.py reads them from the config.
    dynamic_spatial: bool = False
    onnx: onnx_export.OnnxOptions = field(default_factory=onnx_export.OnnxOptions)
    serving: ServingConfig = field(default_factory=ServingConfig)
    precision: PrecisionOptions = field(default_factory=PrecisionOptions)
    entry_name: str | None = None  # the repository folder; None: the model's name
    cam: bool = True  # class activation map data where the head allows (exporter/cam.py)


@dataclass(frozen=True)
class ExportResult:
    name: str
    version: int
    path: Path
    report: dict[str, Any]


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = "not installed"
    return versions


def _export_size(cfg: ModelCfg, requested: int | None) -> tuple[int, int, int]:
    if requested is None:
        return cfg.input_size
    if requested < cfg.min_input_size:
        raise ValueError(
            f"input size {requested} is below {cfg.name}'s minimum of {cfg.min_input_size}"
        )
    return (cfg.channels, requested, requested)


def _config_parameters(cfg: ModelCfg, prov: Provenance) -> dict[str, str]:
    """Preprocessing and provenance, as config.pbtxt string parameters."""
    return {
        keys.COLOR_MODE: "L" if cfg.channels == 1 else "RGB",
        keys.RESIZE_SIZE: str(cfg.resize_size),
        keys.CROP_SIZE: str(cfg.crop_size),
        keys.INTERPOLATION: cfg.interpolation,
        keys.MEAN: ",".join(f"{m:.6g}" for m in cfg.mean),
        keys.STD: ",".join(f"{s:.6g}" for s in cfg.std),
        keys.MODEL_FAMILY: cfg.family,
        keys.MODEL_SOURCE: cfg.source,
        keys.WEIGHTS_KIND: prov.kind,
        keys.WEIGHTS_TRAINED: "true" if prov.trained else "false",
        keys.WEIGHTS_DESCRIPTION: prov.description,
    }


def _check_tensorrt(request: ExportRequest) -> None:
    """Fail fast, before the slow stages, when a TensorRT engine cannot be built here."""
    if request.precision.backend != "tensorrt":
        return
    if request.serving.instance_kind == "cpu":
        raise PrecisionError("a TensorRT engine runs on a GPU: --instance-kind cpu is not possible")

    reason = unavailable_reason(need_tensorrt=True)
    if reason:
        raise PrecisionError(f"--backend tensorrt builds on an NVIDIA GPU with TensorRT: {reason}")


@dataclass(frozen=True)
class _Job:
    """One export's fixed facts, settled (and checked) before any slow stage runs."""

    request: ExportRequest
    cfg: ModelCfg
    repository: Path
    entry: str
    version: int
    export_size: tuple[int, int, int]
    started: float
    progress: Progress

    def stage(self, msg: str) -> None:
        self.progress(f"[{self.entry}] {msg} ({time.perf_counter() - self.started:.1f}s)")


@dataclass(frozen=True)
class _Onnx:
    """The staged ONNX file and whether its H/W axes stayed dynamic (and why not)."""

    path: Path
    dynamic_hw: bool
    fixed_reason: str


def _plan(request: ExportRequest, progress: Progress) -> _Job:
    """Refuse what can be refused before the slow stages: model, backend, size, repository."""
    started = time.perf_counter()
    cfg = get_cfg(request.model)
    _check_tensorrt(request)
    export_size = _export_size(cfg, request.input_size)
    repository = files.check_writable(request.repository)
    entry = request.entry_name or cfg.name
    version = files.choose_version(repository / entry, request.version)
    return _Job(request, cfg, repository, entry, version, export_size, started, progress)


def export_model(request: ExportRequest, progress: Progress = print) -> ExportResult:
    """Export ``request.model`` into the repository; raises before writing on any failure."""
    job = _plan(request, progress)
    cfg, export_size = job.cfg, job.export_size
    model, prov = load_with_weights(
        cfg.name, request.weights, seed=request.onnx.seed, input_size=export_size
    )
    job.stage(f"built, weights: {prov.description}")
    params = count_params(model)
    macs = count_macs(model, cfg.input_size)
    job.stage(f"{params / 1e6:.2f}M params, {macs / 1e9:.3f} GMACs at {cfg.input_size}")

    exported, cam_split = cam.prepare(model, request.cam, request.precision.backend)
    with files.staging(job.repository) as scratch:
        version_dir = scratch / str(job.version)
        version_dir.mkdir()
        onnx = _write_onnx(
            job, exported, version_dir / "model.onnx", with_cam=exported is not model
        )
        reports = _check_parity(job, model, onnx)
        config = model_config(
            cfg,
            request.serving,
            input_hw=(export_size[1], export_size[2]),
            dynamic_hw=onnx.dynamic_hw,
            parameters=_config_parameters(cfg, prov),
        )
        config.name = job.entry
        cam_report = _cam_stage(job, config, version_dir, cam_split)
        precision, engine = _precision_stage(job, config, version_dir, onnx.path, prov.trained)
        report = {
            "model": cfg.name,
            "version": job.version,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "export_seconds": round(time.perf_counter() - job.started, 2),
            **_shape_report(job, onnx, engine, params, macs),
            "onnx": _onnx_report(request.onnx, onnx),
            "parity": [r.to_dict() for r in reports],
            "cam": cam_report,
            "precision": precision,
            **({"tensorrt": engine} if engine else {}),
            "weights": prov.to_dict(),
            "accuracy": prov.metrics,
            "libraries": _library_versions(),
        }
        (version_dir / keys.EXPORT_REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        target = files.commit(
            job.repository,
            job.entry,
            job.version,
            version_dir,
            config,
            labels_for(cfg.labels, cfg.num_classes),
        )
    job.stage(f"written to {target}")
    return ExportResult(name=job.entry, version=job.version, path=target, report=report)


def _write_onnx(job: _Job, model: nn.Module, onnx_path: Path, *, with_cam: bool) -> _Onnx:
    """Export, check and (if asked) simplify; H/W dynamic when asked and the model allows.

    ``with_cam``: ``model`` is the CAM wrapper, whose second output is the feature map.
    """
    cfg, opts, export_size = job.cfg, job.request.onnx, job.export_size
    dynamic_hw = job.request.dynamic_spatial and not cfg.fixed_input_size
    fixed_reason = onnx_export.export(
        model,
        onnx_path,
        export_size,
        dynamic_hw=dynamic_hw,
        options=opts,
        min_hw=cfg.min_input_size,
        outputs=(onnx_export.OUTPUT_NAME, *([cam.FEATURES_OUTPUT] if with_cam else [])),
    )
    if fixed_reason:
        dynamic_hw = False
        job.stage(f"H/W fixed at {export_size[1]}x{export_size[2]}: {fixed_reason}")
    job.stage(f"exported ONNX opset {opts.opset} ({opts.exporter})")
    onnx_export.check(onnx_path)
    if opts.simplify:
        onnx_export.simplify(onnx_path)
        onnx_export.check(onnx_path)
    job.stage("onnx.checker full check passed" + (", simplified" if opts.simplify else ""))
    return _Onnx(onnx_path, dynamic_hw, fixed_reason)


def _check_parity(job: _Job, model: nn.Module, onnx: _Onnx) -> list[onnx_export.ParityReport]:
    """ONNX Runtime against PyTorch at the export size (and another, when H/W are dynamic)."""
    cfg, opts, export_size = job.cfg, job.request.onnx, job.export_size
    checks = [(opts.parity_batch, *export_size)]
    if onnx.dynamic_hw:  # prove the dynamic H/W axes on another size too
        checks.append((2, cfg.channels, export_size[1] + 32, export_size[2] + 32))
    reports = [onnx_export.parity(model, onnx.path, shape, opts) for shape in checks]
    for rep in reports:
        if not rep.passed:
            raise onnx_export.ParityError(
                f"{cfg.name}: parity check failed on input {rep.input_shape}: {rep.reason} "
                f"(max rel err {rep.max_rel_err:.2e}, max abs err {rep.max_abs_err:.2e}, "
                f"top-1 agreement {rep.top1_agreement:.0%}); nothing was written"
            )
    job.stage(
        f"parity vs PyTorch: max rel err {max(r.max_rel_err for r in reports):.2e}, "
        f"top-1 agreement {min(r.top1_agreement for r in reports):.0%}"
    )
    return reports


def _cam_stage(
    job: _Job, config: Any, version_dir: Path, split: cam.CamSplit | str
) -> dict[str, Any]:
    """Write the CAM head (when the family has one) and name the feature output in ``config``."""
    report = cam.write(version_dir, split, job.export_size)
    if report["available"]:
        config.parameters[keys.CAM_FEATURES_OUTPUT].string_value = cam.FEATURES_OUTPUT
        job.stage(f"CAM: feature map {report['features_shape']} as output {cam.FEATURES_OUTPUT}")
    else:
        job.stage(f"no class activation maps: {report['reason']}")
    return report


def _shape_report(
    job: _Job, onnx: _Onnx, engine: dict[str, Any] | None, params: int, macs: int
) -> dict[str, Any]:
    """The report's config, input/output and size entries (in the report's key order)."""
    cfg, export_size = job.cfg, job.export_size
    return {
        "config": cfg.to_dict(),
        "input": {
            "name": onnx_export.INPUT_NAME,
            "shape": [
                -1,
                cfg.channels,
                *((-1, -1) if onnx.dynamic_hw and not engine else export_size[1:]),
            ],
            "exported_at_size": list(export_size),
        },
        "output": {"name": onnx_export.OUTPUT_NAME, "shape": [-1, cfg.num_classes]},
        "params": params,
        "reference_params": cfg.reference_params,
        "macs": macs,
        "gmacs": round(macs / 1e9, 4),
        "macs_input_size": list(cfg.input_size),
    }


def _onnx_report(opts: onnx_export.OnnxOptions, onnx: _Onnx) -> dict[str, Any]:
    return {
        "file": onnx.path.name,
        "opset": opts.opset,
        "exporter": opts.exporter,
        "simplified": opts.simplify,
        "dynamic_hw": onnx.dynamic_hw,
        "fixed_hw_reason": onnx.fixed_reason or None,
        "bytes": onnx.path.stat().st_size,
        "sha256": file_sha256(onnx.path),
    }


def _precision_stage(
    job: _Job, config: Any, version_dir: Path, onnx_path: Path, trained: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Apply --precision/--backend to the staged FP32 ONNX and to ``config`` (in place)."""
    opts = job.request.precision
    config.parameters[keys.MODEL_PRECISION].string_value = opts.precision
    if opts.is_default:
        return {"precision": "fp32", "backend": "onnxruntime"}, None

    result = optimize.apply(
        version_dir,
        onnx_path,
        job.cfg,
        preprocess_from(config),
        job.request.serving,
        opts,
        job.export_size,
        trained=trained,
        stage=job.stage,
    )
    if result.tensorrt is not None:
        engine_config(config, job.export_size)
    return result.report, result.tensorrt
