"""Request tracing (Triton's trace extension): the settings the server starts with.

Level, rate, count and log frequency may be changed later through the TraceSetting RPC and
``/v2[/models/M]/trace/setting``; the file, the mode and the OpenTelemetry exporter are fixed
here, as in Triton (a network client must not choose which file the server writes).
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from server.settings.base import Section, setting

U32_MAX = (1 << 32) - 1


class TraceSettings(Section):
    """Triton's ``--trace-config``: what is traced, how often, and where it goes."""

    level: Literal["OFF", "TIMESTAMPS"] = setting("OFF")
    """Trace level at start: OFF or TIMESTAMPS (Triton's request timestamps; no TENSORS)."""
    rate: int = setting(1000, ge=0, le=U32_MAX)
    """Trace one request in every RATE (per model); 0 traces none."""
    count: int = setting(-1, ge=-1, le=(1 << 31) - 1)
    """Traces to collect before tracing stops; -1: no limit."""
    log_frequency: int = setting(0, ge=0, le=U32_MAX)
    """Write traces to FILE.<n> every this many; 0: to FILE when a setting ends (update, exit)."""
    file: str = setting("", metavar="PATH")
    """JSON trace file of the triton mode; empty: none (and the triton mode cannot trace)."""
    mode: Literal["triton", "opentelemetry"] = setting("triton")
    """triton: a JSON trace file; opentelemetry: spans over OTLP/HTTP (the [otel] extra)."""
    otel_url: str = setting("http://localhost:4318/v1/traces", metavar="URL")
    """OTLP/HTTP endpoint the opentelemetry mode exports spans to."""
    otel_resource: str = setting("service.name=cnn-serving", metavar="KEY=VALUE,...")
    """OpenTelemetry resource attributes of the exported spans, comma-separated KEY=VALUE pairs."""
    bsp_max_queue_size: int = setting(2048, ge=1)
    """OpenTelemetry batch span processor: spans held for export; beyond it spans are dropped."""
    bsp_schedule_delay_ms: int = setting(5000, ge=1)
    """OpenTelemetry batch span processor: milliseconds between two exports."""
    bsp_max_export_batch_size: int = setting(512, ge=1)
    """OpenTelemetry batch span processor: most spans in one export (at most bsp_max_queue_size)."""
    max_pending: int = setting(4096, ge=1)
    """Finished traces waiting for the writer thread; beyond it traces are dropped (counted)."""
    max_buffered: int = setting(10000, ge=1)
    """Traces held in memory per setting before they are written even if log_frequency is 0."""

    @model_validator(mode="after")
    def _consistent(self) -> TraceSettings:
        if self.level != "OFF" and self.mode == "triton" and not self.file:
            raise ValueError("trace level TIMESTAMPS in mode triton needs a trace file")
        if self.bsp_max_export_batch_size > self.bsp_max_queue_size:
            raise ValueError(
                f"bsp_max_export_batch_size {self.bsp_max_export_batch_size} exceeds "
                f"bsp_max_queue_size {self.bsp_max_queue_size}"
            )
        for pair in filter(None, self.otel_resource.split(",")):
            if "=" not in pair or not pair.partition("=")[0].strip():
                raise ValueError(f"otel_resource entry {pair!r} is not KEY=VALUE")
        return self
