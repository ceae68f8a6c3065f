"""The server's Prometheus metrics, scraped before and after a load window.

Their deltas give what the client cannot see: batching efficiency (images
per executed batch), and where a request's time went (queue vs compute vs
preprocessing), per model.
"""

from __future__ import annotations

import urllib.request

DEFAULT_METRICS_URL = "http://127.0.0.1:8002/metrics"


def scrape(metrics_url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(metrics_url, timeout=timeout) as resp:
        return resp.read().decode()


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """One model's samples (summed over versions; histogram buckets left out).

    Keys are sample names, with extra labels other than model/version appended
    in braces: ``inference_requests_total{code=OK}``.
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != model or s.name.endswith(("_bucket", "_created")):
                continue
            extra = {k: v for k, v in s.labels.items() if k not in ("model", "version")}
            key = s.name + (
                "{" + ",".join(f"{k}={v}" for k, v in sorted(extra.items())) + "}" if extra else ""
            )
            out[key] = out.get(key, 0.0) + s.value
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _mean_ms(delta: dict[str, float], hist: str) -> float | None:
    count = delta.get(f"{hist}_count", 0.0)
    return delta.get(f"{hist}_sum", 0.0) / count * 1e3 if count > 0 else None


def server_figures(delta: dict[str, float], window_s: float) -> dict:
    """Batching efficiency and mean queue/compute/end-to-end time from metric deltas."""
    inferences = delta.get("inference_count_total", 0.0)
    executions = delta.get("inference_exec_count_total", 0.0)
    compute_sum = delta.get("inference_compute_duration_seconds_sum", 0.0)
    return {
        "inference_count": inferences,
        "exec_count": executions,
        "batching_efficiency": inferences / executions if executions > 0 else None,
        "queue_ms_mean": _mean_ms(delta, "inference_queue_duration_seconds"),
        "compute_ms_mean": _mean_ms(delta, "inference_compute_duration_seconds"),
        "request_ms_mean": _mean_ms(delta, "inference_request_duration_seconds"),
        "preprocess_ms_mean": _mean_ms(delta, "inference_preprocess_duration_seconds"),
        # share of the window an instance spent inside run_batch
        "compute_busy_pct": 100 * compute_sum / window_s if window_s > 0 else None,
        "requests_by_code": _by_code(delta),
    }


def _by_code(delta: dict[str, float]) -> dict[str, float]:
    """``inference_requests_total`` per status code, summed over the other labels (protocol)."""
    out: dict[str, float] = {}
    for key, value in delta.items():
        if not key.startswith("inference_requests_total{") or not value:
            continue
        labels = dict(part.split("=", 1) for part in key[key.index("{") + 1 : -1].split(","))
        code = labels.get("code", "")
        out[code] = out.get(code, 0.0) + value
    return out
