"""Loaded models: backends per instance, a batcher per version, and their state.

The manager owns the lifecycle Triton users expect: load everything (or the
named models) at start, warm each instance up at every preferred batch size
before reporting ready, keep serving the others when one fails to load (with
the reason in RepositoryIndex), and load/unload at run time. A reload builds
the new version first and swaps it in; the old one drains what it accepted.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import queue
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines import Backend, BackendConfig, create_backend
from modelrepo import keys
from modelrepo.cam import CamHead, features_output, read_head
from modelrepo.files import model_folders
from modelrepo.serving import ServingConfig, read_serving
from modelrepo.spec import ModelConfigError, ModelSpec, load_spec
from server.batching.batcher import DynamicBatcher
from server.batching.types import RunFeatures
from server.core import ensemble
from server.core.errors import InvalidArgument, NotFound, Unavailable, shown
from server.core.limits import max_spatial_size
from server.core.metrics import Metrics, ModelMetrics

log = logging.getLogger(__name__)

RunBatch = Callable[[np.ndarray], np.ndarray]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ServerOptions:
    repository: Path
    models: tuple[str, ...] = ()  # empty: every model in the repository
    allow_cpu_fallback: bool = False
    intra_op_threads: int = 0  # 0: config parameter or runtime default
    batching: bool = True
    # Command-line overrides of config.pbtxt: ServingConfig field -> value (see read_serving).
    serving_overrides: tuple[tuple[str, Any], ...] = ()
    max_queue_share: float = 0.5  # of the queue, the most one client may hold (fairness.py)
    retire_timeout_s: float = 30.0  # how long a replaced/unloaded version waits for its requests
    warmup: bool = True
    # ONNX Runtime session config entries for every model; config.pbtxt parameters
    # named "onnxruntime.<key>" add per-model ones, and these override them.
    onnxruntime_config: tuple[tuple[str, str], ...] = ()


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

    async def close(self, drain: bool = True) -> None:
        await self.batcher.stop(drain=drain)
        for backend in self.backends:
            backend.unload()


@dataclass
class ModelEntry:
    name: str
    state: str = "UNAVAILABLE"  # READY | LOADING | UNAVAILABLE | UNLOADING
    reason: str = ""
    versions: dict[int, ServedVersion] = field(default_factory=dict)


def check_name(name: str) -> str:
    """Model names from requests never reach the filesystem unchecked."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"invalid model name {shown(name)}: 1 to 128 letters, digits, '_', '-', '.' "
            "(no path separators, no '..')"
        )
    return name


def unknown_model(name: str, what: str) -> str:
    """Triton's wording for a model or version it cannot serve (clients match the prefix)."""
    return f"Request for unknown model: {shown(name)} {what}"


def version_number(text: str) -> int | None:
    """A requested version as a number; None unless it is plain ASCII digits ("²" is not)."""
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


def batching_config(spec: ModelSpec, opts: ServerOptions) -> ServingConfig:
    """``spec``'s serving configuration with the command line's overrides applied."""
    return read_serving(
        spec.config,
        **dict(opts.serving_overrides),
        intra_op_threads=opts.intra_op_threads or None,
        dynamic_batching=None if opts.batching else False,
    )


def _backend_config(
    spec: ModelSpec, version: int, opts: ServerOptions, serving: ServingConfig
) -> BackendConfig:
    accel = spec.config.optimization.execution_accelerators.gpu_execution_accelerator
    return BackendConfig(
        model_file=spec.model_file(version),
        platform=spec.platform,
        instance_kind=serving.instance_kind,
        allow_cpu_fallback=opts.allow_cpu_fallback,
        intra_op_threads=serving.intra_op_threads,
        use_tensorrt_ep=any(a.name == "tensorrt" for a in accel),
        session_config=(*_session_params(spec), *opts.onnxruntime_config),
        features_output=features_output(spec.config),
    )


def _session_params(spec: ModelSpec) -> list[tuple[str, str]]:
    """config.pbtxt parameters "onnxruntime.<key>" as ONNX Runtime session config entries."""
    return [
        (key.removeprefix(keys.ONNXRUNTIME_PREFIX), param.string_value)
        for key, param in sorted(spec.config.parameters.items())
        if key.startswith(keys.ONNXRUNTIME_PREFIX)
    ]


def _versions_to_serve(spec: ModelSpec) -> list[int]:
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


class ModelManager:
    def __init__(self, opts: ServerOptions, metrics: Metrics) -> None:
        self.opts = opts
        self.metrics = metrics
        self.entries: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Called with (model name, ready) after every load/unload (health service).
        self.listeners: list[Callable[[str, bool], None]] = []
        # Loads run off the event loop, always on this one thread: the allocator then
        # reuses one arena for every session built, instead of fragmenting several.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="model-loader")

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._loader, fn, *args)

    def _notify(self, name: str) -> None:
        ready = bool(self.entries.get(name) and self.entries[name].versions)
        for listener in self.listeners:
            listener(name, ready)

    def names_in_repository(self) -> list[str]:
        return model_folders(self.opts.repository)

    async def load_all(self) -> None:
        names = list(self.opts.models) or self.names_in_repository()
        for name in names:
            if name in self.entries and self.entries[name].versions:
                continue  # loaded already, as a member of an ensemble loaded before it
            try:
                await self.load(name)
            except Exception as exc:  # reported in RepositoryIndex; the rest keep loading
                log.error("model %s failed to load: %s", name, exc)

    async def load(self, name: str) -> None:
        check_name(name)
        if not (self.opts.repository / name / keys.CONFIG_FILE).is_file() and (
            name not in self.entries
        ):  # no lasting state for names that are not models
            raise NotFound(f"failed to load {shown(name)}, failed to poll from model repository")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self.entries.setdefault(name, ModelEntry(name))
            old = entry.versions
            entry.state, entry.reason = ("READY" if old else "LOADING"), ""
            try:
                new = await self._build_any(name)
                for served in new.values():
                    served.batcher.start()
            except Exception as exc:
                if not old:
                    entry.state, entry.reason = "UNAVAILABLE", str(exc)
                self._notify(name)
                if isinstance(exc, NotFound):
                    raise
                raise Unavailable(f"failed to load '{name}': {self._public(exc)}") from exc
            entry.versions, entry.state, entry.reason = new, "READY", ""
            log.info("model %s ready, versions %s", name, sorted(new))
            self._notify(name)
        await self._retire(old)

    async def _build_any(self, name: str) -> dict[int, ServedVersion]:
        model_dir = self.opts.repository / name
        if (model_dir / keys.CONFIG_FILE).is_file():
            spec = await self._off_loop(load_spec, model_dir)
            if ensemble.is_ensemble(spec):
                return await self._build_ensemble(spec)
        return await self._off_loop(self._build, name)

    async def _build_ensemble(self, spec: ModelSpec) -> dict[int, ServedVersion]:
        """Members load first (each with its own batcher); one that cannot makes the
        ensemble unavailable with the member's reason."""
        plan = await ensemble.load_members(spec, self)
        served: dict[int, ServedVersion] = {}
        for version in _versions_to_serve(spec):
            bcfg = batching_config(spec, self.opts)
            batcher = ensemble.EnsembleBatcher(plan, self.get, bcfg, name=f"{spec.name}/{version}")
            metrics = self.metrics.bind(spec.name, str(version))
            served[version] = ServedVersion(spec, version, [], batcher, metrics)  # type: ignore[arg-type]
        return served

    def _build(self, name: str) -> dict[int, ServedVersion]:
        model_dir = self.opts.repository / name
        if not (model_dir / keys.CONFIG_FILE).is_file():
            raise NotFound(f"failed to load {shown(name)}, failed to poll from model repository")
        spec = load_spec(model_dir)
        max_spatial_size(spec)  # a bad limit parameter fails the load, not every request
        if not spec.versions:
            raise ModelConfigError(
                f"no version folder (1/, 2/, ...) in model '{name}': nothing to serve"
            )
        served: dict[int, ServedVersion] = {}
        for version in _versions_to_serve(spec):
            bcfg = batching_config(spec, self.opts)
            backends = []
            for _ in range(bcfg.instance_count):
                backend = create_backend(_backend_config(spec, version, self.opts, bcfg))
                backend.load()
                backends.append(backend)
            if self.opts.warmup:
                self._warm_up(spec, backends, bcfg)
            metrics = self.metrics.bind(name, str(version))
            cam = read_head(spec.config, spec.version_dir(version))
            run, run_features = _pool_runners(backends)
            served[version] = ServedVersion(
                spec=spec,
                version=version,
                backends=backends,
                batcher=DynamicBatcher(
                    run,
                    bcfg,
                    name=f"{name}/{version}",
                    observer=metrics,
                    max_queue_share=self.opts.max_queue_share,
                    run_features=run_features if cam is not None else None,
                ),
                metrics=metrics,
                cam=cam,
            )
        return served

    @staticmethod
    def _warm_up(spec: ModelSpec, backends: list[Backend], bcfg: ServingConfig) -> None:
        """Run every preferred batch size once per instance, before reporting ready."""
        shape = spec.image_dims
        for size in sorted({1, *bcfg.preferred_batch_sizes}):
            x = np.zeros((size, *shape), dtype=np.float32)
            for backend in backends:
                try:
                    backend.infer(x)
                except Exception as exc:  # typically config dims that the model file disagrees with
                    raise ModelConfigError(
                        f"warm-up with input shape {list(x.shape)} (dims {list(spec.input_dims)} "
                        f"from config.pbtxt) failed: {exc}"
                    ) from exc

    async def unload(self, name: str) -> None:
        check_name(name)
        entry = self.entries.get(name)
        if entry is None or not entry.versions:
            raise NotFound(f"model '{name}' is not loaded")
        ensemble.check_unload(name, self.entries)
        async with self._locks.setdefault(name, asyncio.Lock()):
            versions, entry.versions = entry.versions, {}
            entry.state, entry.reason = "UNLOADING", ""
            await self._retire(versions)
            entry.state, entry.reason = "UNAVAILABLE", "unloaded"
        self._notify(name)

    async def _retire(self, versions: dict[int, ServedVersion]) -> None:
        """Close versions no longer served once the requests that had already resolved them
        are answered: one that was decoding images when the new version was swapped in
        must still find its batcher accepting. Bounded by ``retire_timeout_s``."""
        if not versions:
            return
        deadline = time.monotonic() + self.opts.retire_timeout_s
        while time.monotonic() < deadline and any(_in_flight(v) for v in versions.values()):
            await asyncio.sleep(0.01)
        for served in versions.values():
            await served.close(drain=True)
        await self._off_loop(release_memory)

    def _public(self, exc: BaseException) -> str:
        """An error's text without the server's repository path (clients see model names)."""
        return (
            str(exc)
            .replace(f"{self.opts.repository}/", "")
            .replace(str(self.opts.repository), "<repository>")
        )

    def get(self, name: str, version: str = "") -> ServedVersion:
        """The served version, or Triton's errors in Triton's words (clients match on them)."""
        entry = self.entries.get(name)
        if entry is None:
            raise NotFound(unknown_model(name, "is not found"))
        if not entry.versions:
            why = f" ({entry.state}: {entry.reason})" if entry.reason else f" ({entry.state})"
            raise Unavailable(unknown_model(name, "has no available versions") + why)
        if not version:
            return entry.versions[max(entry.versions)]
        number = version_number(version)
        if number is None or number not in entry.versions:
            shown_version = version if number is not None else shown(version)
            raise NotFound(unknown_model(name, f"version {shown_version} is not found"))
        return entry.versions[number]

    def ready(self) -> bool:
        return any(e.versions for e in self.entries.values())

    async def close(self) -> None:
        for entry in self.entries.values():
            versions, entry.versions = entry.versions, {}
            for served in versions.values():
                await served.close(drain=True)
        self._loader.shutdown(wait=False)


def _in_flight(served: ServedVersion) -> float:
    """Requests in the data plane that resolved ``served`` (its in-flight gauge)."""
    return sum(s.value for m in served.metrics.in_flight.collect() for s in m.samples)


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
