"""ONNX Runtime session config entries: from config.pbtxt parameters and the command line
into a real InferenceSession."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.base import create_backend
from modelrepo.spec import load_spec
from server.__main__ import parse_args
from server.core.models import _backend_config, batching_config
from server.settings import BatchingSettings, ModelSettings

PARAMS = """
parameters {
  key: "onnxruntime.session.intra_op.allow_spinning"
  value { string_value: "0" }
}
parameters {
  key: "onnxruntime.session.dynamic_block_base"
  value { string_value: "4" }
}
"""


@pytest.fixture(scope="module")
def lenet(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("ortcfg")
    shutil.copytree(serve_repo / "lenet5", repo / "lenet5")
    config = repo / "lenet5" / "config.pbtxt"
    config.write_text(config.read_text() + PARAMS)
    return repo


def test_config_parameters_and_command_line_reach_the_session(lenet: Path) -> None:
    spec = load_spec(lenet / "lenet5")
    opts = ModelSettings(
        repository=lenet, onnxruntime_config={"session.intra_op.allow_spinning": "1"}
    )
    cfg = _backend_config(spec, 1, opts, batching_config(spec, opts, BatchingSettings()))
    assert cfg.session_config == (
        ("session.dynamic_block_base", "4"),
        ("session.intra_op.allow_spinning", "0"),
        ("session.intra_op.allow_spinning", "1"),  # the command line comes last and wins
    )
    assert cfg.intra_op_threads == 1  # lenet5, 0.4 MMACs per image: one thread (below)
    backend = create_backend(cfg)
    backend.load()
    session_entries = backend._session.get_session_options().get_session_config_entry
    assert session_entries("session.intra_op.allow_spinning") == "1"
    assert session_entries("session.dynamic_block_base") == "4"
    assert session_entries("session.inter_op.allow_spinning") == "0"  # the engine's default
    assert backend.describe()["session_config"]["session.dynamic_block_base"] == "4"
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    assert backend.infer(x).shape == (2, 10)


def test_small_models_run_on_one_intra_op_thread_unless_configured(
    lenet: Path, serve_repo: Path
) -> None:
    """export.json's MACs decide when neither config.pbtxt nor the command line did."""
    for repo, name, opts, want in (
        (lenet, "lenet5", ModelSettings(repository=lenet), 1),
        (lenet, "lenet5", ModelSettings(repository=lenet, intra_op_threads=2), 2),
        (serve_repo, "mobilenet_v2", ModelSettings(repository=serve_repo), 0),  # the runtime's
    ):
        spec = load_spec(repo / name)
        serving = batching_config(spec, opts, BatchingSettings())
        assert _backend_config(spec, 1, opts, serving).intra_op_threads == want, (name, opts)


def test_command_line_entries_are_key_value_pairs(lenet: Path, capsys) -> None:
    opts = parse_args(
        ["--model-repository", str(lenet), "--onnxruntime-config", " session.a = 1 ",
         "--instance-count", "2"]
    )  # fmt: skip
    assert opts.models.onnxruntime_config == {"session.a": "1"}
    assert opts.batching.serving_overrides()["instance_count"] == 2
    for bad in (["--onnxruntime-config", "novalue"], ["--instance-count", "0"]):
        with pytest.raises(SystemExit):
            parse_args(["--model-repository", str(lenet), *bad])
    err = capsys.readouterr().err
    assert "expected KEY=VALUE, got 'novalue'" in err
    assert "--instance-count / CNN_SERVING_BATCHING__INSTANCE_COUNT: " in err and "(got 0)" in err
