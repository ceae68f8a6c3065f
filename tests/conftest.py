"""Shared fixtures: real photographs, a fresh checkpoint cache, one pretrained export,
and one tritonclient session against a real server.

The tritonclient session is session-scoped because two modules
(test_tritonclient.py, test_tritonclient_control.py) assert on one report, and
running it costs a server start and a child interpreter. tritonclient cannot be
imported in this process (its generated protobuf modules and ours define the
same ``inference.*`` names: see test_protocol.py), so the child runs
``tests/kit/triton_session.py``, which uses only tritonclient, numpy and Pillow, and
prints what it observed as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from exporter.samples import EXPECTED, photo_paths
from tests.kit import KIT
from tests.kit.triton_helpers import LENET, LITE0, ROOT

TRITON_SESSION = KIT / "triton_session.py"
TRITON_HTTP_SESSION = KIT / "triton_http_session.py"
TRITON_DIGIT_ROWS = slice(0, 1800, 150)  # 12 digits spread over the set


@pytest.fixture(scope="session", autouse=True)
def grpc_core_stays_up() -> Iterator[None]:
    """One idle channel held for the whole session, so gRPC's core never shuts down.

    gRPC core counts its users: when a process's last channel is collected it tears
    down its threads (event engine, timer, lifeguard) and the next channel starts them
    again. This suite does that hundreds of times, as each module's server exits and its
    channels are collected. One full run died of a segfault in a native thread at such a
    moment (test_image_decoding's server gone, test_images' starting) and another of an
    abort; with the core held up it keeps its threads, and the channel never connects.
    """
    channel = grpc.insecure_channel("127.0.0.1:9")  # discard port; never called
    yield
    channel.close()


@pytest.fixture(scope="session", autouse=True)
def fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train LeNet from scratch once per run instead of trusting ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("CNN_SERVING_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    found = {name: path for name, path in photo_paths().items() if name in EXPECTED}
    assert len(found) >= 5, f"expected the packaged sample photos, found {sorted(found)}"
    return found


@pytest.fixture(scope="session")
def lite0_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding efficientnet_lite0 with its genuine ImageNet weights."""
    from exporter.pipeline import ExportRequest, export_model

    repo = tmp_path_factory.mktemp("repo-lite0")
    export_model(
        ExportRequest(model="efficientnet_lite0", weights="pretrained", repository=repo),
        progress=lambda _: None,
    )
    return repo


@pytest.fixture(scope="session")
def serve_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lenet5 (trained on digits) and mobilenet_v2 (random, exported with dynamic H/W so
    the suites can reach the server's spatial limits), for the server suites."""
    from exporter.pipeline import ExportRequest, export_model

    path = tmp_path_factory.mktemp("serve-repo")
    for name in ("lenet5", "mobilenet_v2"):
        request = ExportRequest(model=name, repository=path, dynamic_spatial=True)
        export_model(request, progress=lambda _: None)
    return path


# ------------------------------------------------------------------ tritonclient session


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory: pytest.TempPathFactory, lite0_repo: Path) -> Path:
    """efficientnet_lite0 (the session-wide pretrained export) and a freshly trained lenet5."""
    from exporter.pipeline import ExportRequest, export_model

    repo = tmp_path_factory.mktemp("triton-repo")
    shutil.copytree(lite0_repo / LITE0, repo / LITE0)
    export_model(ExportRequest(model=LENET, repository=repo), progress=lambda _: None)
    return repo


@pytest.fixture(scope="session")
def triton_server(
    triton_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``python -m server`` on ports the OS picks; its URL."""
    from tests.kit.serving import EXPLICIT, start_server

    # explicit: the session loads and unloads models
    srv = start_server(
        triton_repository, log_dir=tmp_path_factory.mktemp("triton-server"), security=EXPLICIT
    )
    yield srv.url
    code = srv.terminate(timeout=60)
    assert code == 0, f"exit code {code} after SIGTERM:\n{srv.output()[-4000:]}"


@pytest.fixture(scope="session")
def triton_digits() -> tuple[np.ndarray, np.ndarray]:
    """lenet5 inputs as its config describes them: grey 32x32, (x/255 - 0.5) / 0.5; labels."""
    from exporter.digits import digit_images

    images, labels = digit_images()
    x = (images[TRITON_DIGIT_ROWS].astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x[:, None]), labels[TRITON_DIGIT_ROWS]


def _run_session(
    script: Path, url: str, digits: np.ndarray, photos: dict[str, Path], folder: Path
) -> dict[str, Any]:
    """Run a tritonclient session script in a child interpreter; its JSON report."""
    np.save(folder / "digits.npy", digits)
    plan = {
        "url": url,
        "digits": str(folder / "digits.npy"),
        "photos": {name: str(path) for name, path in photos.items()},
    }
    (folder / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.run(
        [sys.executable, str(script), str(folder / "plan.json")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def triton_report(
    triton_server: str,
    triton_digits: tuple[np.ndarray, np.ndarray],
    photos: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Run the tritonclient session once per pytest run against the server; its JSON report."""
    folder = tmp_path_factory.mktemp("triton-session")
    return _run_session(TRITON_SESSION, triton_server, triton_digits[0], photos, folder)


@pytest.fixture(scope="session")
def triton_http_report(
    http_server: Any,
    triton_digits: tuple[np.ndarray, np.ndarray],
    photos: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """The tritonclient.http session (tests/kit/triton_http_session.py); its JSON report."""
    folder = tmp_path_factory.mktemp("triton-http-session")
    url = f"127.0.0.1:{http_server.http_port}"
    return _run_session(TRITON_HTTP_SESSION, url, triton_digits[0], photos, folder)


@pytest.fixture(scope="session")
def lenet_reference(triton_repository: Path) -> Callable[[np.ndarray], np.ndarray]:
    """lenet5's exported ONNX model run in this process: x -> logits."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(triton_repository / LENET / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.asarray(x, dtype=np.float32)})[0]


@pytest.fixture(scope="session")
def http_server(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server for the HTTP/REST suites (its own process: they load and unload models)."""
    from tests.kit.serving import EXPLICIT, start_server

    srv = start_server(
        triton_repository, log_dir=tmp_path_factory.mktemp("http-server"), security=EXPLICIT
    )
    yield srv
    code = srv.terminate(timeout=60)
    assert code == 0, f"exit code {code} after SIGTERM:\n{srv.output()[-4000:]}"
