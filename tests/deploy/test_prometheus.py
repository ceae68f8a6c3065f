"""The observability path for real, without Docker: the compose exporter's script
fills a repository, a real server serves it, a real Prometheus (Debian's build,
our docker/prometheus config with the target swapped for the local server)
scrapes it during a known workload. Prometheus must hold the right counts, the
alert rules must evaluate, every PromQL query of the Grafana dashboard must be
accepted and the main panels must have data, and the image's HEALTHCHECK
command must tell a serving server from a missing one."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from tests.kit.deploy_tools import DASHBOARD, DOCKER, PROMETHEUS_DIR, ROOT, run, tool
from tests.kit.serving import ServerProcess, digits, free_port, start_server, tensor_request

JOB = "cnn-serving"
MODEL = "lenet5"
OK_SINGLE, OK_BATCH4, BAD_SHAPE = 12, 3, 2  # the workload: requests of each kind
# Grafana's variables, as "All" and a typical interval would expand them.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "5m", "$job": ".*", "$model": ".*"}


@dataclass
class Stack:
    server: ServerProcess
    prometheus: str  # base URL
    repo: Path


def query(base: str, promql: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:  # 400/422 carry Prometheus's JSON error
        return json.load(exc)


def values(base: str, promql: str) -> list[tuple[dict, float]]:
    reply = query(base, promql)
    assert reply["status"] == "success", f"{promql}: {reply}"
    return [(r["metric"], float(r["value"][1])) for r in reply["data"]["result"]]


def scalar(base: str, promql: str) -> float:
    found = values(base, promql)
    assert len(found) == 1, f"{promql}: expected one series, got {found}"
    return found[0][1]


def wait_for(base: str, promql: str, expected: float, timeout: float = 30) -> None:
    """Poll until Prometheus has scraped ``expected`` (scrape interval 1 s)."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        seen = values(base, promql)
        if len(seen) == 1 and seen[0][1] == expected:
            return
        time.sleep(0.3)
    raise AssertionError(f"{promql}: waited for {expected}, last seen {seen}")


def export_models(repo: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELS": f"{MODEL}:random", "PYTHON": sys.executable}
    return subprocess.run(
        ["sh", str(DOCKER / "export-models.sh"), str(repo)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def prometheus_config(metrics_port: int) -> dict:
    """docker/prometheus/prometheus.yml, scraping the local server every second."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    job.pop("dns_sd_configs")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    config["scrape_configs"] = [job]
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus-stack")
    repo = tmp / "models"
    done = export_models(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    server = start_server(repo, log_dir=tmp)
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(server.metrics_port)))
    port = free_port()
    with (tmp / "prometheus.log").open("w") as log:
        prom = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert prom.poll() is None, (tmp / "prometheus.log").read_text()
            assert time.monotonic() < deadline, (tmp / "prometheus.log").read_text()
            time.sleep(0.2)
        yield Stack(server, base, repo)
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        assert server.terminate() == 0, server.output()


@pytest.fixture(scope="module")
def workload(stack: Stack) -> Stack:
    """A good and a bad request, seen by Prometheus, then the rest, so that every
    rate() of the dashboard spans an increase between two scrapes."""
    stub = stack.server.stub()

    def bad_shape() -> None:
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(tensor_request(MODEL, np.zeros((1, 3, 32, 32), np.float32)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    requests = f'inference_requests_total{{model="{MODEL}",code="%s"}}'
    stub.ModelInfer(tensor_request(MODEL, digits(1)))
    bad_shape()
    wait_for(stack.prometheus, requests % "OK", 1)
    wait_for(stack.prometheus, requests % "INVALID_ARGUMENT", 1)
    for i in range(1, OK_SINGLE):
        stub.ModelInfer(tensor_request(MODEL, digits(1, seed=i)))
    for i in range(OK_BATCH4):
        stub.ModelInfer(tensor_request(MODEL, digits(4, seed=100 + i)))
    for _ in range(1, BAD_SHAPE):
        bad_shape()
    wait_for(stack.prometheus, requests % "OK", OK_SINGLE + OK_BATCH4)
    wait_for(stack.prometheus, requests % "INVALID_ARGUMENT", BAD_SHAPE)
    wait_for(
        stack.prometheus, f'inference_count_total{{model="{MODEL}"}}', OK_SINGLE + 4 * OK_BATCH4
    )
    return stack


def test_export_script_filled_the_repository_and_keeps_it(stack: Stack) -> None:
    onnx = stack.repo / MODEL / "1" / "model.onnx"
    meta = json.loads((onnx.parent / "export.json").read_text())
    assert meta["weights"]["kind"] == "random", meta["weights"]  # NAME:WEIGHTS parsed
    before = onnx.stat().st_mtime_ns
    again = export_models(stack.repo)
    assert again.returncode == 0 and f"{MODEL}: " in again.stdout and "kept" in again.stdout
    assert onnx.stat().st_mtime_ns == before


def test_prometheus_holds_the_workload_counts(workload: Stack) -> None:
    base, sel = workload.prometheus, f'job="{JOB}",model="{MODEL}"'
    assert scalar(base, f'up{{job="{JOB}"}}') == 1
    codes = {m["code"]: v for m, v in values(base, f"inference_requests_total{{{sel}}}")}
    assert codes == {"OK": OK_SINGLE + OK_BATCH4, "INVALID_ARGUMENT": BAD_SHAPE}
    # The latency histogram counts successful requests: every bucket series arrived.
    ok = OK_SINGLE + OK_BATCH4
    assert scalar(base, f"inference_request_duration_seconds_count{{{sel}}}") == ok
    assert scalar(base, f"inference_request_duration_seconds_sum{{{sel}}}") > 0
    buckets = values(base, f"inference_request_duration_seconds_bucket{{{sel}}}")
    by_le = sorted((float(m["le"]), v) for m, v in buckets)
    assert len(by_le) >= 10 and by_le[-1] == (math.inf, ok)
    assert all(a[1] <= b[1] for a, b in zip(by_le, by_le[1:], strict=False)), by_le
    images = OK_SINGLE + 4 * OK_BATCH4
    assert scalar(base, f"inference_batch_size_sum{{{sel}}}") == images
    executions = scalar(base, f"inference_exec_count_total{{{sel}}}")
    assert scalar(base, f"inference_batch_size_count{{{sel}}}") == executions
    assert OK_BATCH4 <= executions <= ok


def test_alert_rules_evaluate_on_real_series(workload: Stack) -> None:
    with urllib.request.urlopen(f"{workload.prometheus}/api/v1/rules", timeout=10) as resp:
        groups = json.load(resp)["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} == {
        "InferenceServerDown",
        "InferenceErrorRatioHigh",
        "InferenceLatencyP99High",
    }
    deadline = time.monotonic() + 10
    while any(r["health"] == "unknown" for r in rules) and time.monotonic() < deadline:
        time.sleep(0.5)  # not evaluated yet
        with urllib.request.urlopen(f"{workload.prometheus}/api/v1/rules", timeout=10) as resp:
            rules = [r for g in json.load(resp)["data"]["groups"] for r in g["rules"]]
    assert all(r["health"] == "ok" for r in rules), rules
    # The server is up, and bad input (12 % of requests here) is the caller's fault:
    # neither alert is even pending. (p99 is left out: a loaded CI machine may stall.)
    state = {r["name"]: r["state"] for r in rules}
    assert state["InferenceServerDown"] == state["InferenceErrorRatioHigh"] == "inactive", rules


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


def expand(expr: str) -> str:
    for name, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unexpanded Grafana variable in {expr}"
    return expr


def test_every_dashboard_query_is_accepted_and_main_panels_have_data(workload: Stack) -> None:
    base = workload.prometheus
    queries = dashboard_queries()
    assert len(queries) >= 15
    with_data: dict[str, bool] = {}
    for title, expr in queries:
        found = values(base, expand(expr))  # asserts status == success
        finite = any(math.isfinite(v) for _, v in found)
        with_data[title] = with_data.get(title, False) or finite
    for title, has in with_data.items():
        # No request was dropped and tensors skip preprocessing: those may be empty.
        if not re.search(r"Dropped", title):
            assert has, f"panel '{title}' has no data after the workload"
    p99 = values(base, expand(next(e for t, e in queries if "p99" in e or "0.99" in e)))
    assert all(0 < v < 10 for _, v in p99), p99


def test_a_query_prometheus_rejects_is_reported(workload: Stack) -> None:
    """The acceptance check above can fail: a malformed query comes back as an error."""
    reply = query(workload.prometheus, "sum by (model (inference_count_total)")
    assert reply["status"] == "error" and reply["errorType"] == "bad_data"


def test_dashboard_variables_list_the_served_job_and_model(workload: Stack) -> None:
    board = json.loads(DASHBOARD.read_text())
    for var in board["templating"]["list"]:
        selector, label = re.fullmatch(
            r"label_values\((.+),\s*(\w+)\)", var["query"]["query"]
        ).groups()
        url = f"{workload.prometheus}/api/v1/series?" + urllib.parse.urlencode(
            {"match[]": expand(selector)}
        )
        with urllib.request.urlopen(url, timeout=10) as resp:
            found = {s[label] for s in json.load(resp)["data"]}
        assert {"job": JOB, "model": MODEL}[var["name"]] in found, (var["name"], found)


def healthcheck_command() -> list[str]:
    """The server image's HEALTHCHECK CMD, with the venv's python."""
    text = (DOCKER / "server.Dockerfile").read_text().replace("\\\n", " ")
    cmd = json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:3] == ["python", "-m", "server.grpc.probe"], cmd
    return [sys.executable, *cmd[1:]]


def test_image_healthcheck_command_probes_grpc_health(stack: Stack) -> None:
    cmd = healthcheck_command()
    healthy = run(*cmd, "--address", stack.server.url)
    assert healthy.returncode == 0 and "SERVING" in healthy.stdout, healthy
    model = run(*cmd, "--address", stack.server.url, "--service", "nosuch")
    assert model.returncode == 1 and "NOT_FOUND" in model.stderr, model
    nobody = run(*cmd, "--address", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert nobody.returncode == 1 and "UNAVAILABLE" in nobody.stderr, nobody
    bad = run(*cmd, "--timeout", "0")
    assert bad.returncode == 2 and "--timeout must be > 0 seconds, got 0.0" in bad.stderr, bad
