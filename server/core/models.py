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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelrepo.files import model_folders
from modelrepo.keys import CONFIG_FILE
from modelrepo.names import RULE, valid_name
from modelrepo.override import config_from_json, staged_model
from modelrepo.reading import ReadLimits, fingerprint
from modelrepo.spec import ModelConfigError, ModelSpec, load_spec, parse_config
from protos import model_config_pb2 as mc
from server.core import ensemble
from server.core.building import (  # ServedVersion: re-exported for callers
    BuildContext,
    ServedVersion,
    _backend_config,  # noqa: F401  (tests/server/core/test_onnxruntime_config.py)
    batching_config,
    build_version,
    close_versions,
    release_memory,
    versions_to_serve,
)
from server.core.errors import InvalidArgument, NotFound, Unavailable, shown
from server.core.limits import max_spatial_size
from server.core.load_request import LoadRequest
from server.core.loader import Loader, Stop
from server.core.metrics import Metrics
from server.settings.models import BatchingSettings, ModelSettings
from server.settings.repository import RepositorySettings

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = RepositorySettings()
PLAIN = LoadRequest()  # a load naming only the model
_STAGED = re.compile(r"\S*cnn-serving-load-[^/\s]+/")  # a load request's private folder


@dataclass
class ModelEntry:
    name: str
    state: str = "UNAVAILABLE"  # READY | LOADING | UNAVAILABLE | UNLOADING
    reason: str = ""
    versions: dict[int, ServedVersion] = field(default_factory=dict)
    source: str = ""  # what the served versions were built from (see ModelManager._source)


def check_name(name: str) -> str:
    """Model names from requests never reach the filesystem unchecked."""
    if not valid_name(name):
        raise InvalidArgument(f"invalid model name {shown(name)}: {RULE}")
    return name


def unknown_model(name: str, what: str) -> str:
    """Triton's wording for a model or version it cannot serve (clients match the prefix)."""
    return f"Request for unknown model: {shown(name)} {what}"


def version_number(text: str) -> int | None:
    """A requested version as a number; None unless it is plain ASCII digits ("²" is not)."""
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


class ModelManager:
    def __init__(
        self,
        opts: ModelSettings,
        metrics: Metrics,
        batching: BatchingSettings | None = None,
        repository: RepositorySettings = DEFAULT_SETTINGS,
    ) -> None:
        self.opts = opts
        self.batching = batching or BatchingSettings()
        self.metrics = metrics
        self.settings = repository
        self.limits = repository.read_limits()
        self.entries: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Called with (model name, ready) after every load/unload (health service).
        self.listeners: list[Callable[[str, bool], None]] = []
        # Reads and builds run off the event loop, each on its own abandonable thread.
        self.loader = Loader(repository.load_timeout_s)
        self._context = BuildContext(metrics, self.limits, repository.warmup_bytes, self.batching)
        self._roots = sorted({str(opts.repository), str(Path(opts.repository).resolve())}, key=len)

    def _notify(self, name: str) -> None:
        ready = bool(self.entries.get(name) and self.entries[name].versions)
        for listener in self.listeners:
            listener(name, ready)

    def names_in_repository(self) -> list[str]:
        return model_folders(self.opts.repository)

    def scrub(self, message: str) -> str:
        """``message`` without the server's paths: clients see model-relative names only."""
        for root in reversed(self._roots):
            message = message.replace(root + "/", "").replace(root, "<repository>")
        return _STAGED.sub("", message)

    async def load_all(self) -> None:
        names = list(self.opts.names) or self.names_in_repository()
        for name in names:
            if name in self.entries and self.entries[name].versions:
                continue  # loaded already, as a member of an ensemble loaded before it
            try:
                await self.load(name)
            except Exception:  # logged and reported in RepositoryIndex; the rest keep loading
                continue

    async def load(self, name: str, request: LoadRequest = PLAIN) -> None:
        """Load or reload ``name``: from its folder, or as ``request`` gives it (Triton's
        ``config`` and ``file:`` parameters). An unchanged model is kept as it is."""
        check_name(name)
        request.check(name)
        folder = self.opts.repository / name
        if (
            not request.files
            and not (folder / CONFIG_FILE).is_file()
            and not (request.config is not None and folder.is_dir())
        ):  # no lasting state for names that are not models
            raise NotFound(f"failed to load {shown(name)}, failed to poll from model repository")
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self.entries.setdefault(name, ModelEntry(name))
            old = entry.versions
            try:
                source = await self.loader.run(name, self._source, name, request)
                if old and _same_source(entry.source, source, request):
                    log.info("model %s unchanged since it was loaded: kept", name)
                    return
                entry.state, entry.reason = ("READY" if old else "LOADING"), ""
                new = await self._build_any(name, request)
                for served in new.values():
                    served.batcher.start()
            except asyncio.CancelledError:  # the caller left: the build stops, as abandoned
                self._failed(entry, Unavailable("the load was cancelled by its caller"), request)
                raise
            except Exception as exc:
                raise self._failed(entry, exc, request) from exc
            entry.versions, entry.state, entry.reason = new, "READY", ""
            entry.source = source
            log.info("model %s ready, versions %s", name, sorted(new))
            self._notify(name)
        await self._retire(old)

    def _failed(self, entry: ModelEntry, exc: Exception, request: LoadRequest) -> Exception:
        """The client's answer for a failed load (no server paths in it); the entry keeps
        serving its old versions, or reports the reason."""
        message = self.scrub(str(exc))
        log.error("model %s failed to load: %s", entry.name, exc)
        if not entry.versions:
            entry.state, entry.reason = "UNAVAILABLE", message
        self._notify(entry.name)
        if isinstance(exc, (NotFound, InvalidArgument)):
            said = message.startswith("failed to load")
            return type(exc)(message if said else f"failed to load '{entry.name}': {message}")
        if isinstance(exc, ModelConfigError) and not request.plain:
            return InvalidArgument(f"failed to load '{entry.name}': {message}")
        return Unavailable(f"failed to load model '{entry.name}': {message}")

    def _source(self, name: str, request: LoadRequest) -> str:
        """What a load would build from: the folder's state, plus the request's own parts.
        Equal to the served entry's: nothing to rebuild."""
        if request.files:
            return f"request:{request.digest()}"
        folder = fingerprint(self.opts.repository / name)
        return folder if request.config is None else f"{folder}|{request.digest()}"

    async def read_spec(self, name: str, config_json: str | None = None) -> ModelSpec:
        """``name``'s spec from its folder (``config_json`` replacing fields of its
        config.pbtxt), read off the event loop within the load timeout."""
        return await self.loader.run(name, self._read_spec, name, config_json)

    def _read_spec(self, name: str, config_json: str | None) -> ModelSpec:
        folder = self.opts.repository / name
        if config_json is None:
            return load_spec(folder, self.limits)
        base = (
            parse_config(folder / CONFIG_FILE, self.limits.config_bytes)
            if (folder / CONFIG_FILE).exists()
            else None
        )
        return load_spec(folder, self.limits, _override(config_json, base, self.limits))

    async def _build_any(self, name: str, request: LoadRequest) -> dict[int, ServedVersion]:
        if request.files:
            return await self.loader.run(
                name, self._build_staged, name, request, discard=close_versions, stop=True
            )
        spec = await self.read_spec(name, request.config)
        if ensemble.is_ensemble(spec):
            return await self._build_ensemble(spec)
        return await self.loader.run(name, self._build, spec, discard=close_versions, stop=True)

    def _build_staged(
        self, name: str, request: LoadRequest, stop: Stop
    ) -> dict[int, ServedVersion]:
        """A model made of the request's files (its folder exists for this load only)."""
        assert request.config is not None  # LoadRequest.check
        with staged_model(name, request.files) as folder:
            spec = load_spec(folder, self.limits, _override(request.config, None, self.limits))
            if ensemble.is_ensemble(spec):
                raise ModelConfigError("an ensemble is loaded from the repository, not from files")
            return self._build(spec, stop)

    async def _build_ensemble(self, spec: ModelSpec) -> dict[int, ServedVersion]:
        """Members load first (each with its own batcher); one that cannot makes the
        ensemble unavailable with the member's reason."""
        plan = await ensemble.load_members(spec, self)
        served: dict[int, ServedVersion] = {}
        for version in versions_to_serve(spec):
            bcfg = batching_config(spec, self.opts, self.batching)
            batcher = ensemble.EnsembleBatcher(plan, self.get, bcfg, name=f"{spec.name}/{version}")
            metrics = self.metrics.bind(spec.name, str(version))
            served[version] = ServedVersion(spec, version, [], batcher, metrics)  # type: ignore[arg-type]
        return served

    def _build(self, spec: ModelSpec, stop: Stop) -> dict[int, ServedVersion]:
        max_spatial_size(spec)  # a bad limit parameter fails the load, not every request
        if not spec.versions:
            raise ModelConfigError(
                f"model '{spec.name}': no version folder (1/, 2/, ...): nothing to serve"
            )
        served: dict[int, ServedVersion] = {}
        try:
            for version in versions_to_serve(spec):
                served[version] = build_version(spec, version, self.opts, self._context, stop)
        except BaseException:
            close_versions(served)
            raise
        return served

    async def unload(self, name: str) -> None:
        """Unload ``name``; a load of it in progress is abandoned, never waited for."""
        check_name(name)
        entry = self.entries.get(name)
        if (entry is None or not entry.versions) and not self.loader.busy(name):
            raise NotFound(f"model '{name}' is not loaded")
        ensemble.check_unload(name, self.entries)
        self.loader.abandon(name, f"model '{name}' was unloaded while it loaded")
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self.entries.setdefault(name, ModelEntry(name))
            versions, entry.versions = entry.versions, {}
            entry.state, entry.reason, entry.source = "UNLOADING", "", ""
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
        if not self.loader.closed:
            await self.loader.run("", release_memory)

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

    def begin_shutdown(self) -> None:
        """Abandon every load in progress and refuse new ones (shutdown waits for none)."""
        self.loader.close()

    async def close(self) -> None:
        self.begin_shutdown()
        for entry in self.entries.values():
            versions, entry.versions = entry.versions, {}
            for served in versions.values():
                await served.close(drain=True)


def _same_source(served: str, wanted: str, request: LoadRequest) -> bool:
    """A plain load keeps what a config override built while the folder is unchanged
    (as Triton does); any other load rebuilds unless everything is the same."""
    return served == wanted or (request.plain and served.startswith(wanted + "|"))


def _override(config_json: str, base: mc.ModelConfig | None, limits: ReadLimits) -> mc.ModelConfig:
    try:
        return config_from_json(config_json, base, limits.config_bytes)
    except ModelConfigError as exc:
        raise InvalidArgument(str(exc)) from exc


def _in_flight(served: ServedVersion) -> float:
    """Requests in the data plane that resolved ``served`` (its in-flight gauge)."""
    return served.metrics.live.in_flight
