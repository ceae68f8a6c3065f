"""``python -m server.cluster``'s flags come from the settings tree, keep their names and
defaults, and read ``CNN_SERVING_CLUSTER__*`` and a settings file like the server's; the
token for Ray's authentication is made private and required (no Ray needed here)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from server.cluster.__main__ import _parser, main
from server.cluster.auth import auth_env, ensure_token
from server.settings.cli import flag_of, given, leaves
from server.settings.cluster import NodeSettings
from server.settings.sources import load

# Every flag each command had before the tree, with its default (None: a switch or a path
# with no default). `deploy`/`status`/`down` connected to 127.0.0.1:6379 by default.
SETTINGS_FLAGS = {
    "--min-worker-port": 10002, "--max-worker-port": 19999, "--client-server-port": 10001,
    "--worker-niceness": 0, "--default-min-replicas": 2, "--deploy-timeout-s": 300.0,
    "--stop-grace-s": 10.0,
}  # fmt: skip
DEPLOY_FLAGS = {
    "--model-repository": Path("model_repository"), "--models": (), "--grpc-port": 8001,
    "--http-port": 8000, "--min-replicas": None, "--max-replicas": None,
    "--target-ongoing-requests": None, "--replica-cpus": None, "--intra-op-threads": 0,
    "--ingress-replicas": None, "--address": None, **SETTINGS_FLAGS,
}  # fmt: skip
HISTORICAL = {
    "up": {**DEPLOY_FLAGS, "--port": 6379, "--node-ip": None, "--num-cpus": None,
           "--object-store-mb": 256, "--deploy": None, "--serve-config": None},
    "deploy": {**DEPLOY_FLAGS, "--serve-config": None},
    "status": {"--address": None, "--json": None, "--file-sd": None},
    "down": {"--address": None, "--stop-node": None, "--node-ip": None, **SETTINGS_FLAGS},
}  # fmt: skip


def _value(settings: object, path: tuple[str, ...]) -> object:
    for key in path:
        settings = getattr(settings, key)
    return settings


@pytest.mark.parametrize("command", sorted(HISTORICAL))
def test_every_historical_flag_keeps_its_name_and_default(command: str) -> None:
    parser = _parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    flags = {a for action in sub._actions for a in action.option_strings}
    missing = set(HISTORICAL[command]) - flags
    assert not missing, f"{command} lost {sorted(missing)}"
    settings = load(given(parser.parse_args([command]))).settings
    fields = {flag_of(path, info): path for path, info in leaves()}
    for flag, default in HISTORICAL[command].items():
        if flag in fields:
            assert _value(settings, fields[flag]) == default, (command, flag)
    assert settings.cluster.nodes.connect_address == "127.0.0.1:6379"


def test_flags_over_environment_over_file_and_print_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "cluster.toml"
    file.write_text("[cluster.deploy]\ntimeout_s = 60\ndefault_min_replicas = 4\n")
    monkeypatch.setenv("CNN_SERVING_CLUSTER__DEPLOY__DEFAULT_MIN_REPLICAS", "3")
    monkeypatch.setenv("CNN_SERVING_CLUSTER__NODES__WORKER_NICENESS", "5")
    args = ["deploy", "--settings", str(file), "--worker-niceness", "7", "--models", "a", "b"]
    assert main([*args, "--print-settings"]) == 0
    lines = {line.split("=")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert lines["cluster.deploy.timeout_s"].endswith(f"# file {file}")
    assert (
        "env CNN_SERVING_CLUSTER__DEPLOY__DEFAULT_MIN_REPLICAS"
        in lines["cluster.deploy.default_min_replicas"]
    )
    assert lines["cluster.nodes.worker_niceness"].endswith("# flag")
    assert '["a", "b"]' in lines["cluster.deploy.models"]
    assert main(["up", "--worker-niceness", "20"]) == 2
    assert "--worker-niceness / CNN_SERVING_CLUSTER__NODES__WORKER_NICENESS" in (
        capsys.readouterr().err
    )


def test_the_head_makes_a_private_token_and_others_must_have_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    token = tmp_path / "ray" / "auth_token"
    worker = NodeSettings(address="10.0.0.1:6379", auth_token_file=token)
    with pytest.raises(FileNotFoundError, match=r"no token file .*copy the head's token file"):
        ensure_token(worker, create=False)
    ensure_token(NodeSettings(auth_token_file=token), create=True)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
    first = token.read_text()
    ensure_token(NodeSettings(auth_token_file=token), create=True)  # kept, not replaced
    ensure_token(worker, create=False)
    assert token.read_text() == first
    assert auth_env(worker) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    token.chmod(0o644)
    with pytest.raises(ValueError, match=r"readable by others \(mode 644\): chmod 600"):
        ensure_token(worker, create=False)
    assert auth_env(NodeSettings(auth_mode="disabled")) == {"RAY_AUTH_MODE": "disabled"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-a-secret")  # Ray reads it before any file
    ensure_token(NodeSettings(auth_token_file=tmp_path / "none"), create=False)
    assert auth_env(worker) == {"RAY_AUTH_MODE": "token"}


def test_a_replica_gets_the_trees_data_plane_values_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model application's argument: unchanged settings, unchanged argument (no roll)."""
    from server.cluster.settings import replica_settings, replica_tree
    from server.settings import Settings

    assert replica_settings(Settings()) == {}
    argv = ["deploy", "--intra-op-threads", "2", "--deploy-timeout-s", "9", "--grpc-port", "9001"]
    settings = load(given(_parser().parse_args(argv))).settings
    tree = replica_settings(settings.model_copy(update={"models": settings.models.model_copy(
        update={"repository": Path("/elsewhere"), "names": ("x",)})}))  # fmt: skip
    assert tree == {"models": {"intra_op_threads": 2}}
    monkeypatch.setenv("CNN_SERVING_MODELS__INTRA_OP_THREADS", "5")  # the node's: not read
    assert replica_tree(tree).models.intra_op_threads == 2
