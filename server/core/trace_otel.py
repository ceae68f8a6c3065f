"""The opentelemetry trace mode: each trace becomes Triton's three spans, exported over OTLP/HTTP.

Spans (as Triton's ``tracer.cc`` makes them): ``InferRequest`` (the whole request, with
the frontend's timestamps as events), a child named after the model (REQUEST_START to
REQUEST_END, with Triton's ``triton.*`` attributes) and its child ``compute``
(COMPUTE_START to COMPUTE_END). Timestamps are monotonic; spans need wall-clock time, so
one offset taken at start converts them.

Imported only by the writer thread when the first trace of this mode is finished: the
OpenTelemetry SDK and exporter are the optional ``[otel]`` extra, heavy to import.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server.settings.tracing import TraceSettings

if TYPE_CHECKING:
    from server.core.trace import Trace

TRACER_NAME = "triton-server"  # Triton's instrumentation scope name
_MODEL = ("REQUEST_START", "QUEUE_START", "REQUEST_END")
_PROPAGATOR = TraceContextTextMapPropagator()  # W3C trace context, as Triton's HttpTraceContext


def resource_attributes(text: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in text.split(",") if item.strip())
    return {key.strip(): value.strip() for key, _, value in pairs}


class SpanExporter:
    """A tracer provider of its own (the process-global one is left alone)."""

    def __init__(self, settings: TraceSettings) -> None:
        self.provider = TracerProvider(
            resource=Resource.create(resource_attributes(settings.otel_resource))
        )
        processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=settings.otel_url),
            max_queue_size=settings.bsp_max_queue_size,
            schedule_delay_millis=settings.bsp_schedule_delay_ms,
            max_export_batch_size=settings.bsp_max_export_batch_size,
        )
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer(TRACER_NAME)
        self.offset = time.time_ns() - time.monotonic_ns()  # monotonic -> wall clock

    def export(self, trace: Trace) -> None:
        stamps = sorted(trace.stamps, key=lambda s: s[1])
        if not stamps:
            return
        at = {name: ns + self.offset for name, ns in stamps}
        kind = otel_trace.SpanKind.SERVER
        client = _PROPAGATOR.extract({"traceparent": trace.parent}) if trace.parent else None
        start = min(at.values())
        root = self.tracer.start_span("InferRequest", client, kind, start_time=start)
        ctx = otel_trace.set_span_in_context(root)
        model = None
        if "REQUEST_START" in at:
            model = self.tracer.start_span(
                trace.model, ctx, kind, _attributes(trace), start_time=at["REQUEST_START"]
            )
            if "COMPUTE_START" in at:
                inner = otel_trace.set_span_in_context(model)
                compute = self.tracer.start_span(
                    "compute", inner, kind, start_time=at["COMPUTE_START"]
                )
                for name, ns in at.items():
                    if name.startswith("COMPUTE_"):
                        compute.add_event(name, timestamp=ns)
                compute.end(end_time=at.get("COMPUTE_END", at["COMPUTE_START"]))
        for name, ns in at.items():
            if name in _MODEL and model is not None:
                model.add_event(name, timestamp=ns)
            elif not name.startswith("COMPUTE_"):
                root.add_event(name, timestamp=ns)
        if model is not None:
            model.end(end_time=at.get("REQUEST_END", max(at.values())))
        root.end(end_time=max(at.values()))

    def shutdown(self) -> None:
        """Export what is held, then stop (blocking)."""
        self.provider.shutdown()


def _attributes(trace: Trace) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "triton.model_name": trace.model,
        "triton.model_version": trace.version,
        "triton.trace_id": trace.id,
        "triton.trace_parent_id": 0,
    }
    if trace.request_id:
        attributes["triton.request_id"] = trace.request_id
    return attributes
