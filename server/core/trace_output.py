"""Where finished traces go, on one writer thread: Triton's JSON trace file, or OpenTelemetry.

Triton's file rules: the traces of one setting are held together; with ``log_frequency``
N every N traces are written to ``FILE.<i>`` (i counting from 0), and so are the last ones
when ``count`` runs out; the rest are written to ``FILE`` when the setting ends (an update
replaced it, or shutdown). ``FILE`` stays a valid JSON array after every write. A setting
never holds more than ``max_buffered`` traces, and no more than ``max_pending`` wait for
this thread: beyond that a trace is dropped, counted and logged, and requests go on.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from typing import TYPE_CHECKING, Any

from server.settings.tracing import TraceSettings

if TYPE_CHECKING:
    from server.core.trace import Setting, Trace

log = logging.getLogger(__name__)


def trace_text(trace: Trace) -> str:
    """One trace as Triton writes it, two objects of the JSON array: its identity, then its
    timestamps in time order. Formatted by hand: ``json.dumps`` of the dicts cost 6x more."""
    head = f'{{"id":{trace.id},"model_name":{json.dumps(trace.model)}'
    head += f',"model_version":{trace.version}'
    if trace.request_id:
        head += f',"request_id":{json.dumps(trace.request_id)}'
    ordered = sorted(trace.stamps, key=lambda s: s[1])
    stamps = ",".join([f'{{"name":"{name}","ns":{ns}}}' for name, ns in ordered])
    return f'{head}}},{{"id":{trace.id},"timestamps":[{stamps}]}}'


class _Stream:
    """The traces of one setting not yet written."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.collected = 0


class TraceWriter:
    """A daemon thread that writes (or exports) finished traces, started at the first one."""

    def __init__(self, settings: TraceSettings) -> None:
        self.settings = settings
        self.dropped = 0  # traces refused because the writer fell behind
        self.written = 0  # traces written to a file or handed to the exporter
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(settings.max_pending)
        self._streams: dict[Setting, _Stream] = {}  # held traces, by the setting that took them
        self._index = 0  # next FILE.<i>
        self._begun: set[str] = set()  # files this process wrote (the first write truncates)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._otel: Any = None  # server.core.trace_otel.SpanExporter, made on first use

    def submit(self, trace: Trace) -> None:
        self._put(("trace", trace))

    def retire(self, setting: Setting) -> None:
        """``setting`` was replaced: write what it holds."""
        if self._thread is not None:
            self._put(("retire", setting))

    def _put(self, item: tuple[str, Any]) -> None:
        self._ensure_started()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("trace writer is behind: %d traces dropped", self.dropped)

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name="trace-writer", daemon=True)
                    thread.start()
                    self._thread = thread

    def close(self, held: list[Setting]) -> None:
        """Write every held trace (the settings in force are ending) and stop the thread."""
        if self._thread is None:
            return
        for setting in held:
            self._queue.put(("retire", setting))
        self._queue.put(("stop", None))
        self._thread.join()
        self._thread = None

    # --- the thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            kind, item = self._queue.get()
            try:
                if kind == "stop":
                    break
                if kind == "trace":
                    self._take(item)
                else:
                    self._retire(item)
            except Exception:  # a full disk or a dead collector must not stop tracing
                log.exception("trace writer failed on a %s", kind)
        if self._otel is not None:
            self._otel.shutdown()

    def _take(self, trace: Trace) -> None:
        setting = trace.setting
        if setting.mode == "opentelemetry":
            if self._otel is None:
                from server.core.trace_otel import SpanExporter  # the SDK is an optional extra

                self._otel = SpanExporter(self.settings)
            self._otel.export(trace)
            self.written += 1
            return
        stream = self._streams.setdefault(setting, _Stream())
        stream.items.append(trace_text(trace))
        stream.collected += 1
        done = setting.count == 0 and stream.collected == setting.created
        every = setting.log_frequency
        if done or (every and stream.collected % every == 0):
            self._write(stream, setting.file, indexed=True)
        elif setting.retired or len(stream.items) >= self.settings.max_buffered:
            self._write(stream, setting.file, indexed=bool(every))
        if setting.retired:  # a late trace of a replaced setting: written at once
            self._streams.pop(setting, None)

    def _retire(self, setting: Setting) -> None:
        setting.retired = True
        stream = self._streams.pop(setting, None)
        if stream is not None and stream.items:
            self._write(stream, setting.file, indexed=bool(setting.log_frequency))

    def _write(self, stream: _Stream, path: str, indexed: bool) -> None:
        body, count = ",".join(stream.items), len(stream.items)
        stream.items = []
        if indexed:
            target = f"{path}.{self._index}"
            self._index += 1
            with open(target, "w", encoding="utf-8") as out:
                out.write(f"[{body}]")
        else:
            _append_to_array(path, body, fresh=path not in self._begun)
            self._begun.add(path)
        self.written += count


def _append_to_array(path: str, body: str, fresh: bool) -> None:
    """Add items to the JSON array in ``path`` (``fresh``: replacing the file, as Triton's
    first write does); the file is a valid JSON array after every write."""
    if fresh or not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as new:
            new.write(f"[{body}]")
        return
    with open(path, "r+b") as out:
        out.seek(0, os.SEEK_END)
        if out.tell() < 2:
            out.seek(0)
            out.truncate()
            out.write(f"[{body}]".encode())
        else:
            out.seek(-1, os.SEEK_END)  # over the closing bracket
            out.write(f",{body}]".encode())
