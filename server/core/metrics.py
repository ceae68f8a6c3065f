"""Prometheus metrics on their own HTTP port (Triton's convention: 8002).

Per model and version: requests by gRPC status code, inferences (images) and
executions (batches) whose ratio is the batching efficiency, histograms of
end-to-end, queue, preprocessing and compute time and of the batch size,
and gauges of queue depth and requests in flight. One registry per server,
so several servers in one process (tests) never share counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.core.metrics_http import serve_metrics

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LABELS = ("model", "version")


class QueueSource(Protocol):
    """A batcher, as the queue-depth gauge reads it."""

    @property
    def queue_rows(self) -> int: ...


class LiveSeries:
    """One model version's gauges, read when /metrics is scraped (issue 28).

    Setting two locked gauges on every request cost ~2% of the event loop's busy time at
    LeNet-5's rate; a plain integer changed on the event loop (the only thread that runs
    the data plane) and a read of each batcher's queue at scrape time cost next to
    nothing, and the queue depth is now the one at the scrape, not at the last answer.
    Shared by every ``ModelMetrics`` of the same labels: a reloaded version's old
    instance still counts its draining requests and queue.
    """

    __slots__ = ("in_flight", "queues")

    def __init__(self) -> None:
        self.in_flight = 0  # ModelInfer requests in the data plane
        self.queues: list[QueueSource] = []  # the batchers serving these labels

    def queue_rows(self) -> int:
        return sum(queue.queue_rows for queue in self.queues)


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    inferences: Counter
    executions: Counter
    dropped: Counter
    request_seconds: Histogram
    queue_seconds: Histogram
    preprocess_seconds: Histogram
    compute_seconds: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    in_flight: Gauge
    live: dict[tuple[str, str], LiveSeries] = field(default_factory=dict)

    @classmethod
    def create(cls) -> Metrics:
        reg = CollectorRegistry()

        def hist(name: str, doc: str, buckets: tuple[float, ...] = _LATENCY_BUCKETS) -> Histogram:
            return Histogram(name, doc, _LABELS, buckets=buckets, registry=reg)

        return cls(
            registry=reg,
            requests=Counter(
                "inference_requests",
                "ModelInfer requests by gRPC status code and protocol (grpc, http)",
                (*_LABELS, "code", "protocol"),
                registry=reg,
            ),
            inferences=Counter(
                "inference_count",
                "Images inferred (a request may carry several)",
                _LABELS,
                registry=reg,
            ),
            executions=Counter(
                "inference_exec_count", "Batches executed by the backend", _LABELS, registry=reg
            ),
            dropped=Counter(
                "inference_dropped",
                "Requests dropped before compute",
                (*_LABELS, "reason"),
                registry=reg,
            ),
            request_seconds=hist("inference_request_duration_seconds", "End-to-end ModelInfer"),
            queue_seconds=hist("inference_queue_duration_seconds", "Time waiting for a batch"),
            preprocess_seconds=hist(
                "inference_preprocess_duration_seconds", "Decoding and preprocessing images"
            ),
            compute_seconds=hist("inference_compute_duration_seconds", "Backend time per batch"),
            batch_size=hist("inference_batch_size", "Images per executed batch", _BATCH_BUCKETS),
            queue_depth=Gauge(
                "inference_queue_depth", "Images waiting in the batch queue", _LABELS, registry=reg
            ),
            in_flight=Gauge(
                "inference_in_flight", "ModelInfer requests being handled", _LABELS, registry=reg
            ),
        )

    def bind(self, model: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, model, version)

    def live_series(self, model: str, version: str) -> LiveSeries:
        """The labels' live gauges, their scrape-time callbacks set on first use."""
        live = self.live.get((model, version))
        if live is None:
            live = self.live[(model, version)] = LiveSeries()
            self.in_flight.labels(model, version).set_function(lambda: live.in_flight)
            self.queue_depth.labels(model, version).set_function(live.queue_rows)
        return live

    def serve(self, port: int, addr: str = "0.0.0.0"):
        """Start the /metrics HTTP endpoint; returns the server (call ``shutdown()``)."""
        return serve_metrics(self.registry, port, addr)


class ModelMetrics:
    """One model version's labelled series, looked up once.

    ``labels()`` costs about 2 us a call; the request path would otherwise make
    a dozen such calls per request on the event loop.
    """

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        labels = (model, version)
        self._metrics, self._labels = metrics, labels
        self.inferences = metrics.inferences.labels(*labels)
        self.executions = metrics.executions.labels(*labels)
        self.request_seconds = metrics.request_seconds.labels(*labels)
        self.queue_seconds = metrics.queue_seconds.labels(*labels)
        self.preprocess_seconds = metrics.preprocess_seconds.labels(*labels)
        self.compute_seconds = metrics.compute_seconds.labels(*labels)
        self.batch_size = metrics.batch_size.labels(*labels)
        self.live = metrics.live_series(model, version)  # in flight, queue depth
        self._requests: dict[tuple[str, str], Counter] = {}
        self._dropped: dict[str, Counter] = {}

    def track_queue(self, queue: QueueSource) -> None:
        """Report ``queue``'s waiting rows in the queue-depth gauge until ``untrack_queue``."""
        self.live.queues.append(queue)

    def untrack_queue(self, queue: QueueSource) -> None:
        self.live.queues = [q for q in self.live.queues if q is not queue]

    def requests(self, code: str, protocol: str = "grpc") -> Counter:
        """The request counter of one gRPC status code name and protocol."""
        child = self._requests.get((code, protocol))
        if child is None:
            child = self._metrics.requests.labels(*self._labels, code, protocol)
            self._requests[(code, protocol)] = child
        return child

    def dropped(self, reason: str) -> Counter:
        """The dropped-before-compute counter of one reason (deadline, cancelled)."""
        child = self._dropped.get(reason)
        if child is None:
            child = self._dropped[reason] = self._metrics.dropped.labels(*self._labels, reason)
        return child

    def on_batch(self, batch_size: int, queue_seconds: list[float], compute_seconds: float) -> None:
        """The batcher's observer hook (runs on the event loop after each batch)."""
        self.executions.inc()
        self.inferences.inc(batch_size)
        self.batch_size.observe(batch_size)
        self.compute_seconds.observe(compute_seconds)
        for seconds in queue_seconds:
            self.queue_seconds.observe(seconds)
