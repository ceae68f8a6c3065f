"""Loaded models: backends per instance, a batcher per version, and their state.

The manager owns the lifecycle Triton users expect: load everything (or the
named models) at start, warm each instance up at every preferred batch size
before reporting ready, keep serving the others when one fails to load (with
the reason in RepositoryIndex), and load/unload at run time. A reload builds
the new version first and swaps it in; the old one drains what it accepted.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protos import model_config_pb2 as mc
from server.backends import Backend, BackendConfig, create_backend
from server.batching import BatchingConfig, DynamicBatcher
from server.errors import InvalidArgument, NotFound, Unavailable
from server.metrics import Metrics
from server.repository import ModelSpec, load_spec

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_KIND = {mc.ModelInstanceGroup.KIND_GPU: "gpu", mc.ModelInstanceGroup.KIND_CPU: "cpu"}


@dataclass(frozen=True)
class ServerOptions:
    repository: Path
    models: tuple[str, ...] = ()  # empty: every model in the repository
    allow_cpu_fallback: bool = False
    intra_op_threads: int = 0  # 0: config parameter or runtime default
    batching: bool = True
    max_batch_size: int | None = None  # command-line overrides of config.pbtxt
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] | None = None
    max_queue_size: int | None = None
    default_queue_size: int = 256  # rows, where the config sets no bound
    warmup: bool = True


@dataclass
class ServedVersion:
    spec: ModelSpec
    version: int
    backends: list[Backend]
    batcher: DynamicBatcher
    success_ns: list[int] = field(default_factory=lambda: [0, 0])  # count, ns
    failure_ns: list[int] = field(default_factory=lambda: [0, 0])
    preprocess_ns: list[int] = field(default_factory=lambda: [0, 0])
    last_inference_ms: int = 0

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
    if not _NAME.match(name) or ".." in name:
        raise InvalidArgument(f"invalid model name {name!r}: letters, digits, '_', '-', '.' only")
    return name


def _param_int(spec: ModelSpec, key: str) -> int:
    params = spec.config.parameters
    try:
        return int(params[key].string_value) if key in params else 0
    except ValueError as exc:
        raise Unavailable(f"model '{spec.name}': parameter {key} is not an integer") from exc


def batching_config(spec: ModelSpec, opts: ServerOptions) -> BatchingConfig:
    cfg = spec.config
    dyn = cfg.dynamic_batching if cfg.HasField("dynamic_batching") else None
    max_batch = opts.max_batch_size or max(cfg.max_batch_size, 1)
    preferred = opts.preferred_batch_sizes
    if preferred is None:
        preferred = tuple(b for b in (dyn.preferred_batch_size if dyn else ()) if b <= max_batch)
    delay = opts.max_queue_delay_us
    if delay is None:
        delay = dyn.max_queue_delay_microseconds if dyn else 0
    queue_size = (
        opts.max_queue_size
        or (dyn.default_queue_policy.max_queue_size if dyn else 0)
        or opts.default_queue_size
    )
    instances = sum(g.count or 1 for g in cfg.instance_group) or 1
    return BatchingConfig(
        max_batch_size=max_batch,
        preferred_batch_sizes=preferred,
        max_queue_delay_us=delay,
        max_queue_size=max(queue_size, max_batch),
        instance_count=instances,
        enabled=opts.batching and dyn is not None and cfg.max_batch_size > 0,
    )


def _backend_config(spec: ModelSpec, version: int, opts: ServerOptions) -> BackendConfig:
    groups = spec.config.instance_group
    kind = _KIND.get(groups[0].kind, "auto") if groups else "auto"
    accel = spec.config.optimization.execution_accelerators.gpu_execution_accelerator
    return BackendConfig(
        model_file=spec.model_file(version),
        platform=spec.platform,
        instance_kind=kind,
        allow_cpu_fallback=opts.allow_cpu_fallback,
        intra_op_threads=opts.intra_op_threads or _param_int(spec, "intra_op_thread_count"),
        use_tensorrt_ep=any(a.name == "tensorrt" for a in accel),
    )


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


def warmup_shape(spec: ModelSpec) -> tuple[int, ...]:
    """One image's input shape; dynamic H/W take the configured crop size."""
    crop = spec.preprocess.crop_size
    return tuple(crop if d < 0 else d for d in spec.input_dims)


class ModelManager:
    def __init__(self, opts: ServerOptions, metrics: Metrics) -> None:
        self.opts = opts
        self.metrics = metrics
        self.entries: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Called with (model name, ready) after every load/unload (health service).
        self.listeners: list[Callable[[str, bool], None]] = []

    def _notify(self, name: str) -> None:
        ready = bool(self.entries.get(name) and self.entries[name].versions)
        for listener in self.listeners:
            listener(name, ready)

    def names_in_repository(self) -> list[str]:
        root = self.opts.repository
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def load_all(self) -> None:
        names = list(self.opts.models) or self.names_in_repository()
        for name in names:
            try:
                await self.load(name)
            except Exception as exc:  # reported in RepositoryIndex; the rest keep loading
                log.error("model %s failed to load: %s", name, exc)

    async def load(self, name: str) -> None:
        check_name(name)
        if not (self.opts.repository / name / "config.pbtxt").is_file() and (
            name not in self.entries
        ):  # no lasting state for names that are not models
            raise NotFound(f"no model '{name}' in repository {self.opts.repository}")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self.entries.setdefault(name, ModelEntry(name))
            old = entry.versions
            entry.state, entry.reason = ("READY" if old else "LOADING"), ""
            try:
                new = await asyncio.to_thread(self._build, name)
                for served in new.values():
                    await served.batcher.start()
            except Exception as exc:
                if not old:
                    entry.state, entry.reason = "UNAVAILABLE", str(exc)
                self._notify(name)
                if isinstance(exc, NotFound):
                    raise
                raise Unavailable(f"failed to load model '{name}': {exc}") from exc
            entry.versions, entry.state, entry.reason = new, "READY", ""
            log.info("model %s ready, versions %s", name, sorted(new))
            self._notify(name)
        for served in old.values():  # drain what the old version accepted
            await served.close(drain=True)

    def _build(self, name: str) -> dict[int, ServedVersion]:
        model_dir = self.opts.repository / name
        if not (model_dir / "config.pbtxt").is_file():
            raise NotFound(f"no model '{name}' in repository {self.opts.repository}")
        spec = load_spec(model_dir)
        served: dict[int, ServedVersion] = {}
        for version in _versions_to_serve(spec):
            bcfg = batching_config(spec, self.opts)
            backends = []
            for _ in range(bcfg.instance_count):
                backend = create_backend(_backend_config(spec, version, self.opts))
                backend.load()
                backends.append(backend)
            if self.opts.warmup:
                self._warm_up(spec, backends, bcfg)
            served[version] = ServedVersion(
                spec=spec,
                version=version,
                backends=backends,
                batcher=DynamicBatcher(
                    _pool_runner(backends),
                    bcfg,
                    name=f"{name}/{version}",
                    observer=_Observer(self.metrics, name, str(version)),
                ),
            )
        return served

    @staticmethod
    def _warm_up(spec: ModelSpec, backends: list[Backend], bcfg: BatchingConfig) -> None:
        """Run every preferred batch size once per instance, before reporting ready."""
        shape = warmup_shape(spec)
        for size in sorted({1, *bcfg.preferred_batch_sizes}):
            x = np.zeros((size, *shape), dtype=np.float32)
            for backend in backends:
                backend.infer(x)

    async def unload(self, name: str) -> None:
        check_name(name)
        entry = self.entries.get(name)
        if entry is None or not entry.versions:
            raise NotFound(f"model '{name}' is not loaded")
        async with self._locks.setdefault(name, asyncio.Lock()):
            versions, entry.versions = entry.versions, {}
            entry.state, entry.reason = "UNLOADING", ""
            for served in versions.values():
                await served.close(drain=True)
            entry.state, entry.reason = "UNAVAILABLE", "unloaded"
        self._notify(name)

    def get(self, name: str, version: str = "") -> ServedVersion:
        entry = self.entries.get(name)
        if entry is None:
            known = sorted(self.entries)
            raise NotFound(f"unknown model '{name}'; known models: {known}")
        if not entry.versions:
            raise Unavailable(f"model '{name}' is not ready: {entry.state} {entry.reason}".strip())
        if not version:
            return entry.versions[max(entry.versions)]
        if not version.isdigit() or int(version) not in entry.versions:
            raise NotFound(
                f"model '{name}' has no served version '{version}'; "
                f"served: {sorted(entry.versions)}"
            )
        return entry.versions[int(version)]

    def ready(self) -> bool:
        return any(e.versions for e in self.entries.values())

    async def close(self) -> None:
        for entry in self.entries.values():
            versions, entry.versions = entry.versions, {}
            for served in versions.values():
                await served.close(drain=True)


def _pool_runner(backends: list[Backend]):
    """run_batch for the batcher: each call borrows one instance's backend."""
    pool: queue.SimpleQueue[Backend] = queue.SimpleQueue()
    for backend in backends:
        pool.put(backend)

    def run(batch: np.ndarray) -> np.ndarray:
        backend = pool.get()
        try:
            return backend.infer(np.ascontiguousarray(batch, dtype=np.float32))
        finally:
            pool.put(backend)

    return run


@dataclass
class _Observer:
    metrics: Metrics
    model: str
    version: str

    def on_batch(self, batch_size: int, queue_seconds: list[float], compute_seconds: float) -> None:
        m, labels = self.metrics, (self.model, self.version)
        m.executions.labels(*labels).inc()
        m.inferences.labels(*labels).inc(batch_size)
        m.batch_size.labels(*labels).observe(batch_size)
        m.compute_seconds.labels(*labels).observe(compute_seconds)
        for q in queue_seconds:
            m.queue_seconds.labels(*labels).observe(q)
