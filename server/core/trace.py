"""Triton's trace extension: global and per-model trace settings, sampling, timestamps.

A model without its own setting follows the global one; a model setting names the fields
it sets and takes the others from the global setting, also after the global one changes;
clearing every field of a model setting removes it (Triton's ``tracer.cc`` semantics).
Every update replaces the setting object, so traces already sampled finish under the
setting that sampled them, and the replaced one's traces are written out.

While tracing is off the hot path pays a few attribute reads and ``None`` checks
(``Tracer.on``, ``trace is not None``): nothing is allocated for a request not traced.
Finished traces go to a writer thread (``server/core/trace_output.py``): no file or
exporter work runs on the event loop.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from server.core.errors import InvalidArgument, Unimplemented
from server.core.trace_output import TraceWriter
from server.settings.tracing import U32_MAX, TraceSettings

I32_MAX = (1 << 31) - 1
MIN_COUNT = -1
_FIELDS = ("level", "rate", "count", "log_frequency")
_KEYS = dict(
    trace_level="level", trace_rate="rate", trace_count="count", log_frequency="log_frequency"
)
_FIXED = {"trace_file": "trace file location", "trace_mode": "trace mode"}

Changes = Mapping[str, "list[str] | None"]  # setting -> values; None (or []) clears it


@dataclass(eq=False)  # identity: the writer keys each setting's held traces by it
class Setting:
    """One trace setting in force; replaced, never edited, except its counters."""

    level: str
    rate: int
    count: int  # traces still to collect; -1: no limit
    log_frequency: int
    file: str
    mode: str
    specified: frozenset[str] = frozenset()  # fields a model setting sets itself
    seen: int = 0  # requests counted for the rate
    created: int = 0  # traces sampled
    retired: bool = False  # replaced: set by the writer once it wrote what it held
    reason: str = field(init=False, default="")  # why it samples nothing; '' when valid

    def __post_init__(self) -> None:
        self.reason = self._invalid()  # fields never change: checked once, not per request

    def _invalid(self) -> str:
        """Why this setting samples nothing ('' when it is valid); Triton's reasons."""
        if self.level == "OFF":
            return "tracing is disabled"
        if self.rate == 0:
            return "sample rate must be non-zero"
        if self.mode == "triton" and not self.file:
            return "trace file name is not given"
        return ""


@dataclass(slots=True)
class Trace:
    """One sampled request: its identity and its timestamps (monotonic ns, Triton's clock)."""

    id: int
    model: str
    setting: Setting
    version: int = -1
    request_id: str = ""
    stamps: list[tuple[str, int]] = field(default_factory=list)
    parent: str | None = None  # the client's W3C traceparent (opentelemetry mode)

    def stamp(self, name: str, ns: int = 0) -> None:
        self.stamps.append((name, ns or time.monotonic_ns()))

    def begin(self, model: str, version: int, request_id: str) -> None:
        """The data plane found the model: REQUEST_START."""
        self.model, self.version, self.request_id = model, version, request_id
        self.stamp("REQUEST_START")

    def batched(
        self, queued: float, dispatched: float, input_end_ns: int, output_start_ns: int
    ) -> None:
        """The batcher's times for this request (worker thread; ``queued``/``dispatched`` are
        ``time.monotonic()`` seconds): queue and compute timestamps."""
        end = time.monotonic_ns()
        self.stamps += [
            ("QUEUE_START", int(queued * 1e9)),
            ("COMPUTE_START", int(dispatched * 1e9)),
            ("COMPUTE_INPUT_END", input_end_ns),
            ("COMPUTE_OUTPUT_START", output_start_ns),
            ("COMPUTE_END", end),
        ]


class Tracer:
    """The trace settings of one server and the traces they sample."""

    def __init__(self, settings: TraceSettings | None = None) -> None:
        self.config = settings = settings or TraceSettings()
        values = {f: getattr(settings, f) for f in (*_FIELDS, "file", "mode")}
        self._default = Setting(**values)
        self._global = Setting(**values)
        self._models: dict[str, Setting] = {}
        self._lock = threading.Lock()  # sampling counters and setting swaps
        self._ids = itertools.count(1)
        self.writer = TraceWriter(settings)
        self.on = False  # read on every request: True only while some setting can sample
        self._refresh()

    # --- settings -------------------------------------------------------------------
    def setting(self, model: str = "") -> Setting:
        return self._models.get(model, self._global) if model else self._global

    def describe(self, model: str = "") -> dict[str, list[str]]:
        """The setting in force for ``model`` ('' the global one), as Triton reports it."""
        s = self.setting(model)
        out = {"trace_level": [s.level], "trace_rate": [str(s.rate)], "trace_count": [str(s.count)]}
        if s.mode == "triton":
            out |= {"log_frequency": [str(s.log_frequency)], "trace_file": [s.file]}
        out["trace_mode"] = [s.mode]
        if s.mode == "opentelemetry":
            cfg = self.config
            out |= {
                "url": [cfg.otel_url],
                "resource": [cfg.otel_resource],
                "bsp_max_queue_size": [str(cfg.bsp_max_queue_size)],
                "bsp_schedule_delay": [str(cfg.bsp_schedule_delay_ms)],
                "bsp_max_export_batch_size": [str(cfg.bsp_max_export_batch_size)],
            }
        return out

    def update(self, model: str, changes: Changes) -> dict[str, list[str]]:
        """Apply ``changes`` to ``model``'s setting ('' the global one); the result.
        All or nothing: every derived setting is checked before any is replaced."""
        new, cleared = parse_changes(changes)
        with self._lock:
            if model:
                current = self._models.get(model)
                derived = {model: self._derive(True, current, self._global, new, cleared)}
            else:  # models that take fields from the global setting follow it
                glob = self._derive(False, self._global, self._default, new, cleared)
                derived = {"": glob} | {
                    name: self._derive(True, s, glob, {}, set())
                    for name, s in self._models.items()
                    if s.specified != set(_FIELDS)
                }
            retired = [self._global if not name else self._models.get(name) for name in derived]
            for name, setting in derived.items():
                if not name:
                    self._global = setting  # type: ignore[assignment]
                elif setting is None:
                    self._models.pop(name, None)
                else:
                    self._models[name] = setting
            self._refresh()
        for old in filter(None, retired):
            self.writer.retire(old)
        return self.describe(model)

    @staticmethod
    def _derive(
        model: bool,
        current: Setting | None,
        fallback: Setting,
        new: dict[str, object],
        cleared: set[str],
    ) -> Setting | None:
        """The setting replacing ``current`` (None: a model setting with nothing of its own)."""
        specified = set(current.specified if current else ()) - cleared | set(new)
        values = {f: getattr(fallback, f) for f in _FIELDS}
        values |= {f: getattr(current, f) for f in specified - set(new) if current}
        values |= new
        if model and not specified:
            return None
        candidate = replace(
            fallback, **values, specified=frozenset(specified), seen=0, created=0, retired=False
        )
        if candidate.reason and candidate.level != "OFF":
            raise InvalidArgument(f"Attempting to set invalid trace setting :{candidate.reason}")
        return candidate

    def _refresh(self) -> None:
        settings = [self._global, *self._models.values()]
        self.on = any(
            (not s.reason and s.count != 0) or (s.mode == "opentelemetry" and s.level != "OFF")
            for s in settings
        )

    # --- sampling -------------------------------------------------------------------
    def sample(self, model: str, parent: str | None = None) -> Trace | None:
        """A trace for this request of ``model`` if the rate and count pick it. ``parent``: a
        W3C ``traceparent`` the client sent; in the opentelemetry mode such a request is
        always traced, as a child of the client's span (Triton's context propagation)."""
        s = self._models.get(model, self._global) if self._models else self._global
        if parent and s.mode == "opentelemetry" and s.level != "OFF":
            with self._lock:
                s.created += 1
                return Trace(next(self._ids), model, s, parent=parent)
        if s.reason or s.count == 0:
            return None
        with self._lock:
            s.seen += 1
            if s.seen % s.rate or s.count == 0:  # count: spent by another thread meanwhile
                return None
            if s.count > 0:
                s.count -= 1
                if s.count == 0:
                    self._refresh()
            s.created += 1
            return Trace(next(self._ids), model, s)

    def finish(self, trace: Trace) -> None:
        """The request was answered: hand the trace to the writer thread (never blocks)."""
        self.writer.submit(trace)

    def close(self) -> None:
        """Shutdown (blocking, off the event loop): write what is held, stop exporting."""
        with self._lock:
            held = [self._global, *self._models.values()]
        self.writer.close(held)


def parse_changes(changes: Changes) -> tuple[dict[str, object], set[str]]:
    """(new values by field, cleared fields), checked as Triton checks them."""
    new: dict[str, object] = {}
    cleared: set[str] = set()
    for key, values in changes.items():
        if key in _FIXED:
            raise Unimplemented(f"{_FIXED[key]} can not be updated through network protocol")
        if key not in _KEYS:
            allowed = ", ".join([*_KEYS, *_FIXED])
            raise InvalidArgument(f"unknown trace setting '{key[:64]}'; known: {allowed}")
        name = _KEYS[key]
        if not values:
            cleared.add(name)
        elif name == "level":
            new[name] = _level(values)
        elif len(values) != 1:
            raise InvalidArgument(f"expect only 1 value for '{key}'")
        else:
            low, high = (MIN_COUNT, I32_MAX) if name == "count" else (0, U32_MAX)
            new[name] = _integer(key, values[0], low, high)
    return new, cleared


def _level(values: list[str]) -> str:
    if "OFF" in values and len(values) > 1:
        raise InvalidArgument("Expect only one trace level 'OFF' is specified")
    for value in values:
        if value == "TENSORS":
            raise Unimplemented("trace level TENSORS is not supported by this server")
        if value not in ("OFF", "TIMESTAMPS"):
            raise InvalidArgument(f"unknown trace level '{value[:64]}'; expected OFF or TIMESTAMPS")
    return values[0]


def _integer(key: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InvalidArgument(f"Unable to parse '{key}', got: {text[:64]}") from None
    if key == "trace_count" and value < low:
        raise InvalidArgument(f"Unable to parse '{key}'. Expecting value >= {low}, got: {value}")
    if not low <= value <= high:
        raise InvalidArgument(
            f"Unable to parse '{key}', value is out of range [ {low}, {high} ], got: {value}"
        )
    return value
