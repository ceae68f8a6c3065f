"""Work bounded before it is queued: dynamic spatial sizes (issue 15, finding 4).

mobilenet_v2 declares ``dims: [3, -1, -1]``; an FP32 [1, 3, 1, 4000000] used to be
computed (5 s, +2 GB RSS that stayed) while valid requests waited. Against a real
server: refused INVALID_ARGUMENT naming the limit, no memory spike, valid requests
unaffected; the limit comes from config.pbtxt, else 4x the crop size, and the
server flag overrides both.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelrepo.spec import load_spec
from server.core.limits import max_spatial_size
from tests.kit.serving import ServerProcess, start_server, tensor_request
from tests.kit.stress import ValidStream, peak_rss_mib, reset_peak_rss

CAPPED = "mnv2_capped"


@pytest.fixture(scope="module")
def repo(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mobilenet_v2 as exported, and a copy whose config.pbtxt caps H/W at 64."""
    path = tmp_path_factory.mktemp("limits-repo")
    shutil.copytree(serve_repo / "mobilenet_v2", path / "mobilenet_v2")
    shutil.copytree(serve_repo / "mobilenet_v2", path / CAPPED)
    config = path / CAPPED / "config.pbtxt"
    text = config.read_text().replace('name: "mobilenet_v2"', f'name: "{CAPPED}"')
    cap = 'parameters { key: "max_spatial_size" value { string_value: "64" } }\n'
    config.write_text(text + cap)
    return path


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(repo, log_dir=tmp_path_factory.mktemp("limits"))
    yield srv
    assert srv.terminate() == 0, srv.output()[-3000:]


def refusal(stub, model: str, shape: tuple[int, ...]) -> tuple[grpc.StatusCode, str]:
    try:
        stub.ModelInfer(tensor_request(model, np.zeros(shape, np.float32)), timeout=60)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_a_huge_dynamic_dimension_is_refused_before_any_work(server: ServerProcess) -> None:
    stub = server.stub()
    valid = [tensor_request("mobilenet_v2", np.zeros((2, 3, 224, 224), np.float32))]
    with ValidStream(server, valid) as stream:
        reset_peak_rss(server.proc.pid)
        before = peak_rss_mib(server.proc.pid)
        code, message = refusal(stub, "mobilenet_v2", (1, 3, 1, 4_000_000))  # 48 MB
        growth = peak_rss_mib(server.proc.pid) - before
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, message)
    assert "dimension 3 is 4000000" in message and "max_spatial_size 896" in message, message
    assert "4x the crop size 224" in message, message
    assert growth < 300, f"peak RSS grew {growth:.0f} MiB for a refused request"  # was ~2000
    assert stream.outcomes["OK"] > 0 and set(stream.outcomes) == {"OK"}, stream.messages[:3]
    assert refusal(stub, "mobilenet_v2", (1, 3, 896, 64))[0] == grpc.StatusCode.OK


def test_config_pbtxt_sets_the_limit(server: ServerProcess) -> None:
    stub = server.stub()
    assert refusal(stub, CAPPED, (1, 3, 64, 64))[0] == grpc.StatusCode.OK
    code, message = refusal(stub, CAPPED, (1, 3, 65, 64))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_spatial_size 64" in message and "config.pbtxt parameter" in message, message


def test_the_server_flag_overrides_every_model(repo: Path, tmp_path: Path) -> None:
    assert max_spatial_size(load_spec(repo / CAPPED), 128) == (128, "--max-spatial-size")
    srv = start_server(repo, "--model", CAPPED, "--max-spatial-size", "48", log_dir=tmp_path)
    try:
        code, message = refusal(srv.stub(), CAPPED, (1, 3, 49, 32))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max-spatial-size" in message
        assert refusal(srv.stub(), CAPPED, (1, 3, 48, 32))[0] == grpc.StatusCode.OK
    finally:
        assert srv.terminate() == 0, srv.output()[-3000:]
