"""Building one model's served versions: sessions per instance, warm-up, a batcher.

Runs on a loader thread (server/core/loader.py), never on the event loop; the
manager (models.py) decides when to build and swaps the result in. A build that is
abandoned stops between instances and warm-up runs, and closes what it made.
"""

from __future__ import annotations

import ctypes
import gc
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines import Backend, BackendConfig, create_backend
from modelrepo import keys
from modelrepo.cam import CamHead, features_output, read_head
from modelrepo.reading import ReadLimits, UnsafeFileError, check_regular, read_json
from modelrepo.serving import ServingConfig, read_serving
from modelrepo.spec import ModelConfigError, ModelSpec
from server.batching.batcher import DynamicBatcher
from server.batching.types import RunFeatures
from server.core.errors import Unavailable
from server.core.loader import Stop
from server.core.metrics import Metrics, ModelMetrics
from server.core.warmup import warm_up, warmup_sizes
from server.settings.models import BatchingSettings, ModelSettings

RunBatch = Callable[[np.ndarray], np.ndarray]
# Per image, as the exporter counted them (export.json's "macs"). Below this a batch
# computes in tens of microseconds: waking a second intra-op thread for each operator
# cost more than it saved (LeNet-5, 0.4 MMACs: 8 clients took 1.6x less server CPU per
# request on one thread than on the runtime's default of one per core).
SMALL_MODEL_MACS = 20_000_000


@dataclass
class ServedVersion:
    spec: ModelSpec
    version: int
    backends: list[Backend]
    batcher: DynamicBatcher
    metrics: ModelMetrics  # this version's labelled series
    success_ns: list[int] = field(default_factory=lambda: [0, 0])  # count, ns
    failure_ns: list[int] = field(default_factory=lambda: [0, 0])
    preprocess_ns: list[int] = field(default_factory=lambda: [0, 0])
    output_ns: list[int] = field(default_factory=lambda: [0, 0])  # encoding the answer
    last_inference_ms: int = 0
    cam: CamHead | None = None  # class activation map data (None: the model has none)
    # The single input as every request is checked against it, read once here rather than
    # from the config on each request (issue 28): its name, its dims without the batch
    # dimension, and whether they are all fixed (no dynamic dimension to bound).
    input_name: str = field(init=False, default="")
    input_dims: tuple[int, ...] = field(init=False, default=())
    fixed_input: bool = field(init=False, default=True)
    # outputs.check_outputs' answer for a request naming no output (its frozen entries,
    # made once: every request of a plain client asks for them)
    every_output: list[Any] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.spec.config.input:
            self.input_name = self.spec.config.input[0].name
            self.input_dims = self.spec.input_dims
            self.fixed_input = all(d >= 0 for d in self.input_dims)
        self.metrics.track_queue(self.batcher)  # the queue-depth gauge reads it at scrape

    async def close(self, drain: bool = True) -> None:
        await self.batcher.stop(drain=drain)
        self.metrics.untrack_queue(self.batcher)
        for backend in self.backends:
            backend.unload()


def batching_config(
    spec: ModelSpec, opts: ModelSettings, batching: BatchingSettings
) -> ServingConfig:
    """``spec``'s serving configuration with the settings' overrides applied."""
    return read_serving(
        spec.config,
        **batching.serving_overrides(),
        intra_op_threads=opts.intra_op_threads or None,
    )


def _backend_config(
    spec: ModelSpec, version: int, opts: ModelSettings, serving: ServingConfig
) -> BackendConfig:
    accel = spec.config.optimization.execution_accelerators.gpu_execution_accelerator
    return BackendConfig(
        model_file=spec.model_file(version),
        platform=spec.platform,
        instance_kind=serving.instance_kind,
        allow_cpu_fallback=opts.allow_cpu_fallback,
        intra_op_threads=intra_op_threads(spec, version, serving),
        use_tensorrt_ep=any(a.name == "tensorrt" for a in accel),
        session_config=(*_session_params(spec), *opts.onnxruntime_config.items()),
        features_output=features_output(spec.config),
    )


def intra_op_threads(spec: ModelSpec, version: int, serving: ServingConfig) -> int:
    """The configured count (config.pbtxt, --intra-op-threads); else 1 for a model the
    exporter measured under ``SMALL_MODEL_MACS`` per image; else 0 (the runtime's default)."""
    if serving.intra_op_threads:
        return serving.intra_op_threads
    try:
        report = read_json(spec.version_dir(version) / keys.EXPORT_REPORT_FILE)
    except (OSError, ValueError):  # no report (a hand-made model): the runtime decides
        return 0
    macs = report.get("macs") if isinstance(report, dict) else None
    small = isinstance(macs, int) and 0 < macs < SMALL_MODEL_MACS
    return 1 if small else 0


def _session_params(spec: ModelSpec) -> list[tuple[str, str]]:
    """config.pbtxt parameters "onnxruntime.<key>" as ONNX Runtime session config entries."""
    return [
        (key.removeprefix(keys.ONNXRUNTIME_PREFIX), param.string_value)
        for key, param in sorted(spec.config.parameters.items())
        if key.startswith(keys.ONNXRUNTIME_PREFIX)
    ]


def versions_to_serve(spec: ModelSpec) -> list[int]:
    policy = spec.config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(spec.versions)
    if choice == "specific":
        wanted = [v for v in policy.specific.versions if v in spec.versions]
        if not wanted:
            raise Unavailable(
                f"none of the specific versions {list(policy.specific.versions)}"
                f" exist; found {list(spec.versions)}"
            )
        return wanted
    n = policy.latest.num_versions if choice == "latest" else 1
    return list(spec.versions[-max(n, 1) :])


def build_version(
    spec: ModelSpec,
    version: int,
    opts: ModelSettings,
    build: BuildContext,
    stop: Stop,
) -> ServedVersion:
    """One version: its sessions (one per instance), warmed up, behind a new batcher."""
    bcfg = batching_config(spec, opts, build.batching)
    sizes = warmup_sizes(spec, bcfg, build.warmup_bytes)
    try:
        check_regular(spec.model_file(version))
    except UnsafeFileError as exc:
        raise ModelConfigError(str(exc)) from exc
    backends: list[Backend] = []
    try:
        for _ in range(bcfg.instance_count):
            stop.check()
            backend = create_backend(_backend_config(spec, version, opts, bcfg))
            backends.append(backend)
            backend.load()
        if opts.warmup:
            warm_up(spec, version, backends, sizes, stop.check)
        cam = read_head(spec.config, spec.version_dir(version), build.limits.cam_head_bytes)
    except BaseException:
        for backend in backends:
            backend.unload()
        raise
    metrics = build.metrics.bind(spec.name, str(version))
    run, run_features = _pool_runners(backends)
    batcher = DynamicBatcher(
        run,
        bcfg,
        name=f"{spec.name}/{version}",
        observer=metrics,
        max_queue_share=build.batching.max_queue_share,
        run_features=run_features if cam is not None else None,
    )
    return ServedVersion(spec, version, backends, batcher, metrics, cam=cam)


@dataclass(frozen=True)
class BuildContext:
    """What every build needs besides the spec: the metrics, the byte bounds."""

    metrics: Metrics
    limits: ReadLimits
    warmup_bytes: int
    batching: BatchingSettings


def close_versions(versions: dict[int, ServedVersion]) -> None:
    """Release what an abandoned or failed build made (on the thread that gets it)."""
    for served in versions.values():
        served.batcher.close(drain=False)
        for backend in served.backends:
            backend.unload()


def release_memory() -> None:
    """After an unload: collect the reference cycles that still hold the old version's
    objects (the next full collection may be far off), then hand the freed heap pages
    back to the OS (glibc keeps them in per-thread arenas otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _pool_runners(backends: list[Backend]) -> tuple[RunBatch, RunFeatures]:
    """run_batch and run_features for the batcher: each call borrows one instance's backend."""
    pool: queue.SimpleQueue[Backend] = queue.SimpleQueue()
    for backend in backends:
        pool.put(backend)

    def run(batch: np.ndarray) -> np.ndarray:
        backend = pool.get()
        try:
            out = backend.infer(np.ascontiguousarray(batch, dtype=np.float32))
        finally:
            pool.put(backend)
        # ONNX Runtime's outputs are views of its own buffers: one kept anywhere (a
        # response, a future in a cycle) would keep the session's whole arena alive
        # after an unload. Copying the logits costs microseconds.
        return np.array(out, copy=True)

    def run_features(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        backend = pool.get()
        try:
            out, maps = backend.infer_features(np.ascontiguousarray(batch, dtype=np.float32))
        finally:
            pool.put(backend)
        return np.array(out, copy=True), np.array(maps, copy=True)  # copied as in run

    return run, run_features
