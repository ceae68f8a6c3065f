"""A tiny OTLP/HTTP trace receiver on 127.0.0.1: what an OpenTelemetry collector would get.

It decodes each ``POST /v1/traces`` body (protobuf ``ExportTraceServiceRequest``) with
opentelemetry-proto and keeps the spans; ``wait_for`` blocks until enough arrived.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int]]
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's spelling)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._take(self.path, ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _take(self, path: str, request: ExportTraceServiceRequest) -> None:
        spans = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        ReceivedSpan(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            events=[(e.name, e.time_unix_nano) for e in s.events],
                            resource=resource,
                            scope=ss.scope.name,
                        )
                    )
        with self._changed:
            assert path == "/v1/traces", path
            self.requests += 1
            self.spans += spans
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 60) -> list[ReceivedSpan]:
        """At least ``count`` spans (all received so far), or AssertionError after ``timeout``."""
        with self._changed:
            got = self._changed.wait_for(lambda: len(self.spans) >= count, timeout)
            assert got, f"{len(self.spans)} spans received, expected {count}"
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
