"""`pip install .[serve]` alone (no torch) can serve a model from the repository."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import venv
from pathlib import Path

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from tests.kit.serving import ROOT, start_server


@pytest.fixture(scope="module")
def serve_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("serve-venv")
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{ROOT}[serve]"], check=True, timeout=900
    )
    return python


def test_serve_extra_has_no_torch(serve_python: Path) -> None:
    probe = subprocess.run(
        [str(serve_python), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "None"


def test_serve_only_install_serves(serve_python: Path, serve_repo: Path, tmp_path: Path) -> None:
    srv = start_server(
        serve_repo, "--model", "lenet5", python=str(serve_python), cwd=tmp_path, log_dir=tmp_path
    )
    try:
        req = pb.ModelInferRequest(model_name="lenet5")
        req.inputs.add(name="input", datatype="FP32", shape=[2, 1, 32, 32])
        req.raw_input_contents.append(np.zeros((2, 1, 32, 32), np.float32).tobytes())
        resp = srv.stub().ModelInfer(req)
        assert list(resp.outputs[0].shape) == [2, 10]
        for path, words in (("/", b"cnn-serving"), ("/static/app.js", b"classify")):
            with urllib.request.urlopen(srv.http_url + path, timeout=10) as page:
                assert words in page.read(), path  # the page's files are in the wheel
    finally:
        assert srv.terminate() == 0, srv.output()
    assert str(ROOT) not in srv.output()  # ran from the installed package, not this checkout
    assert sys.executable != str(serve_python)
