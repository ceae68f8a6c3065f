"""The settings tree: flags, CNN_SERVING_* variables and a settings file, generated from
one set of fields, with flags over environment over file over defaults."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.__main__ import load_settings
from server.settings import Settings
from server.settings.cli import build_parser, flag_of, leaves, server_leaf
from server.settings.reference import render
from tests.kit.serving import ROOT

# Every flag `python -m server` had before the tree, with its default: none may change.
HISTORICAL_FLAGS = {
    "--allow-cpu-fallback": False, "--decode-threads": 0, "--grace-seconds": 30.0,
    "--grpc-port": 8001, "--host": "0.0.0.0", "--http-cors-origin": (), "--http-port": 8000,
    "--instance-count": None, "--intra-op-threads": 0, "--log-level": "INFO",
    "--malloc-arena-max": 2, "--malloc-trim-mib": 64, "--max-batch-size": None,
    "--max-image-aspect": 20.0, "--max-image-mb-in-flight": 256,
    "--max-image-pixels": 50_000_000, "--max-images-in-flight": 256, "--max-message-mb": 64,
    "--max-queue-delay-us": None, "--max-queue-share": 0.5, "--max-queue-size": None,
    "--max-resized-pixels": 4_000_000, "--max-spatial-size": None, "--metrics-host": "0.0.0.0",
    "--metrics-port": 8002, "--model": (), "--model-repository": None, "--no-batching": True,
    "--no-shared-memory": True, "--no-warmup": True, "--onnxruntime-config": {},
    "--preferred-batch-size": None, "--tls-cert": None, "--tls-client-ca": None,
    "--tls-key": None,
}  # fmt: skip


def test_every_historical_flag_keeps_its_name_and_default() -> None:
    fields = {flag_of(path, info): info.default for path, info in leaves() if server_leaf(path)}
    for flag, default in HISTORICAL_FLAGS.items():
        assert flag in fields, f"{flag} disappeared"
        assert fields[flag] == default, f"{flag}: default {fields[flag]!r}, was {default!r}"
    parser_flags = {a for action in build_parser("x", None)._actions for a in action.option_strings}
    assert set(HISTORICAL_FLAGS) <= parser_flags


def test_every_field_is_documented_and_the_reference_page_is_current() -> None:
    undocumented = [".".join(p) for p, info in leaves() if not (info.description or "").strip()]
    assert not undocumented, f"fields without a docstring: {undocumented}"
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == render(), "docs/settings.md is stale: python -m server.settings.reference"


def test_flags_override_environment_override_file_override_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "server.toml"
    file.write_text(
        "[listeners]\ngrpc_port = 9001\nhttp_port = 9000\nmetrics_port = 9002\n"
        '[batching]\nmax_queue_share = 0.25\n[models]\nonnxruntime_config = {a = "1"}\n'
    )
    monkeypatch.setenv("CNN_SERVING_LISTENERS__HTTP_PORT", "7000")
    monkeypatch.setenv("CNN_SERVING_LISTENERS__METRICS_PORT", "7002")
    monkeypatch.setenv("CNN_SERVING_MODELS__NAMES", '["lenet5"]')
    loaded = load_settings(
        ["--model-repository", str(tmp_path), "--settings", str(file), "--metrics-port", "-1"]
    )
    s = loaded.settings
    assert (s.listeners.grpc_port, s.listeners.http_port, s.listeners.metrics_port) == (
        9001, 7000, -1,
    )  # fmt: skip
    assert s.batching.max_queue_share == 0.25 and s.models.names == ("lenet5",)
    assert s.models.onnxruntime_config == {"a": "1"} and s.listeners.host == "0.0.0.0"
    origin = loaded.origin
    assert origin[("listeners", "grpc_port")] == f"file {file}"
    assert origin[("listeners", "http_port")] == "env CNN_SERVING_LISTENERS__HTTP_PORT"
    assert origin[("listeners", "metrics_port")] == "flag"
    assert origin[("listeners", "host")] == "default"


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--grpc-port", "-5"], {}, "--grpc-port / CNN_SERVING_LISTENERS__GRPC_PORT: Input "
         "should be greater than or equal to 0 (got -5)"),
        ([], {"CNN_SERVING_BATCHING__MAX_QUEUE_SHARE": "2"}, "--max-queue-share / "
         "CNN_SERVING_BATCHING__MAX_QUEUE_SHARE: Input should be less than or equal to 1"),
        ([], {"CNN_SERVING_LISTENERS__HTTP_PORT": "eighty"}, "CNN_SERVING_LISTENERS__HTTP_PORT"
         ": Input should be a valid integer"),
        (["--tls-cert", "c.pem"], {}, "--tls-cert and --tls-key go together"),
        (["--log-level", "loud"], {}, "--log-level / CNN_SERVING_LOG_LEVEL: Input should be "
         "'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
    ],
)  # fmt: skip
def test_a_bad_value_names_its_flag_and_variable(
    argv: list[str], env: dict[str, str], expected: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_info:
        load_settings(["--model-repository", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_a_bad_settings_file_is_refused_naming_what_is_wrong(tmp_path: Path, capsys) -> None:
    cases = {
        "unknown.toml": ("[listener]\ngrpc_port = 1\n", "setting listener (sections: "),
        "typo.json": (json.dumps({"listeners": {"grpc_prot": 1}}), "setting listeners.grpc_prot"),
        "broken.toml": ("[listeners\n", "broken.toml: "),
        "list.json": ("[1, 2]", "expected a table of sections"),
        "server.ini": ("x=1", "suffix must be .toml, .json, .yaml or .yml"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit):
            load_settings(["--model-repository", str(tmp_path), "--settings", str(tmp_path / name)])
        assert expected in capsys.readouterr().err, name
    with pytest.raises(SystemExit):
        load_settings(["--settings", str(tmp_path / "missing.toml")])
    assert "missing.toml: not a regular file" in capsys.readouterr().err


def test_the_repository_is_required_from_some_source(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        load_settings([])
    assert "--model-repository DIR, CNN_SERVING_MODELS__REPOSITORY" in capsys.readouterr().err
    os.environ["CNN_SERVING_MODELS__REPOSITORY"] = str(tmp_path)
    try:
        assert load_settings([]).settings.models.repository == tmp_path
    finally:
        del os.environ["CNN_SERVING_MODELS__REPOSITORY"]


def test_print_settings_shows_each_value_and_its_source(tmp_path: Path) -> None:
    env = {**os.environ, "CNN_SERVING_IMAGES__DECODE_THREADS": "3"}
    out = subprocess.run(
        [sys.executable, "-m", "server", "--model-repository", str(tmp_path),
         "--grpc-port", "0", "--print-settings"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    lines = {line.split("=")[0].strip(): line for line in out.splitlines()}
    assert len(lines) == len(leaves())
    assert re.search(
        r"= 3 +# env CNN_SERVING_IMAGES__DECODE_THREADS$", lines["images.decode_threads"]
    )
    assert re.search(r"= 0 +# flag$", lines["listeners.grpc_port"])
    assert re.search(r"= 64 +# default$", lines["protocol.max_message_mb"])


def test_a_server_runs_from_a_settings_file_and_the_environment(
    serve_repo: Path, tmp_path: Path
) -> None:
    """No flags at all: the repository from the environment, the listeners from a file."""
    file = tmp_path / "server.yaml"
    file.write_text(
        "listeners:\n  host: 127.0.0.1\n  grpc_port: 0\n  http_port: -1\n"
        "  metrics_port: -1\nmodels:\n  names: [lenet5]\n"
    )
    env = {
        **os.environ,
        "CNN_SERVING_MODELS__REPOSITORY": str(serve_repo),
        "CNN_SERVING_SETTINGS_FILE": str(file),
        "CNN_SERVING_MODELS__WARMUP": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        ready = ""
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("ready:"):
                ready = line
                break
        assert re.search(r"gRPC 127\.0\.0\.1:\d+, metrics port 0, HTTP port -1", ready), ready
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_the_tree_is_one_nested_model() -> None:
    """Sections are frozen: a component cannot change a setting another one reads."""
    s = Settings()
    with pytest.raises(ValueError):
        s.listeners.grpc_port = 1  # type: ignore[misc]
