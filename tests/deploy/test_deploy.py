"""The deployment files, checked without a Docker engine: the compose file
validates and points at files that exist, the Dockerfiles lint clean, the
Prometheus config and alert rules pass promtool (rules also unit-tested), and
Grafana's provisioning agrees with the compose mounts and the dashboard."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.kit.deploy_tools import (
    COMPOSE_FILE,
    DASHBOARD,
    DOCKER,
    PROMETHEUS_DIR,
    ROOT,
    compose_command,
    run,
    tool,
)

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
LONG_RUNNING = ("server", "server-gpu", "prometheus", "grafana")


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose file as the compose tool resolves it (every profile included)."""
    done = run(*compose_command(), "-f", str(COMPOSE_FILE), "--profile", "gpu", "config")
    assert done.returncode == 0, f"docker-compose config rejected the file:\n{done.stderr}"
    return yaml.safe_load(done.stdout)


def _mounts(service: dict) -> list[tuple[str, str, str]]:
    """(type, source, target) of each volume entry, in short or long syntax."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, str):
            source, target = vol.split(":")[:2]
            kind = "bind" if source.startswith(("/", ".")) else "volume"
            out.append((kind, source, target))
        else:
            out.append((vol["type"], vol["source"], vol["target"]))
    return out


def _target_ports(service: dict) -> set[int]:
    ports = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def test_compose_services_reference_existing_builds_and_volumes(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"exporter", "server", "server-gpu", "prometheus", "grafana"}
    for name, svc in services.items():
        if "build" in svc:
            context = (ROOT / svc["build"]["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} missing"
            assert (context / svc["build"]["dockerfile"]).is_file(), f"{name}: no Dockerfile"
        else:
            assert re.fullmatch(r"[\w./-]+:v?\d[\w.-]*", svc["image"]), f"{name}: pin the tag"
        for kind, source, _target in _mounts(svc):
            if kind == "bind":
                assert (ROOT / source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
    for name in LONG_RUNNING:
        limits = services[name]["deploy"]["resources"]["limits"]
        assert limits.get("cpus") and limits.get("memory"), f"{name}: no resource limits"


def test_compose_server_waits_for_the_export_and_publishes_triton_ports(compose: dict) -> None:
    services = compose["services"]
    models = {s for kind, s, _ in _mounts(services["exporter"]) if kind == "volume"}
    for name in ("server", "server-gpu"):
        svc = services[name]
        assert svc["depends_on"]["exporter"]["condition"] == "service_completed_successfully"
        assert _target_ports(svc) == {8000, 8001, 8002}
        served = {(s, t) for kind, s, t in _mounts(svc) if kind == "volume"}
        assert served and {s for s, _ in served} <= models, f"{name} does not read the export"
        assert svc["command"][:2] == ["--model-repository", next(t for _, t in served)]
    gpu = services["server-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"] and device["driver"] == "nvidia"
    assert "profiles" not in services["server"]


def test_compose_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator really validates: a wrong depends_on condition is refused."""
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text().replace("service_completed_successfully", "service_done")
    broken.write_text(text.replace("./docker/", f"{DOCKER}/"))
    done = run(*compose_command(), "-f", str(broken), "config", "-q")
    assert done.returncode != 0
    assert "service_done" in done.stderr + done.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    done = run(tool("hadolint"), "--no-color", str(dockerfile))
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install flask\n")
    done = run(tool("hadolint"), "--no-color", str(bad))
    assert done.returncode != 0
    assert "DL3007" in done.stdout and "DL3003" in done.stdout


def test_dockerfiles_copy_only_existing_paths() -> None:
    """Every COPY source (outside --from stages) exists and is not excluded by .dockerignore."""
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if not line.startswith("COPY ") or "--from=" in line:
                continue
            sources = [a for a in shlex.split(line)[1:] if not a.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} missing"
                top = source.rstrip("/").split("/")
                assert "/".join(top[:2]) not in ignored and top[0] not in ignored, source


def test_server_images_run_as_non_root_with_a_grpc_healthcheck() -> None:
    for name in ("server", "server-gpu"):
        text = (DOCKER / f"{name}.Dockerfile").read_text()
        final = text.split("\nFROM ")[-1]
        assert re.search(r"^USER 10001:10001$", final, re.M), name
        assert "server.grpc.probe" in final.split("HEALTHCHECK", 1)[1].split("\n\n")[0], name
        assert "torch" not in re.sub(r"#.*|find_spec\('torch'\)", "", text), name


def test_prometheus_config_and_rules_pass_promtool() -> None:
    promtool = tool("promtool")
    for args in (
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "rules.yml"),
        ("test", "rules", "rules_test.yml"),
    ):
        done = run(promtool, *args, cwd=PROMETHEUS_DIR)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    assert "SUCCESS: 3 rules found" in run(promtool, "check", "rules", "rules.yml",
                                            cwd=PROMETHEUS_DIR).stdout  # fmt: skip


def test_promtool_rejects_a_bad_rule(tmp_path: Path) -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    rules["groups"][0]["rules"][0]["expr"] = "sum by (model (up)"
    bad = tmp_path / "rules.yml"
    bad.write_text(yaml.safe_dump(rules))
    done = run(tool("promtool"), "check", "rules", str(bad))
    assert done.returncode != 0 and "parse error" in done.stdout + done.stderr


def test_grafana_provisioning_matches_compose_and_dashboard(compose: dict) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {target: ROOT / source for kind, source, target in _mounts(grafana) if kind == "bind"}
    provisioning = mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"  # the compose service name and port
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "cnn-serving.yml").read_text())[
        "providers"
    ]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / DASHBOARD.name).is_file()
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (dashboards / home.relative_to(provider["options"]["path"])).is_file()
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
