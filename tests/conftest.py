"""Shared fixtures: real photographs, a fresh checkpoint cache, one pretrained export."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.samples import EXPECTED, photo_paths


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
    """lenet5 (trained on digits) and mobilenet_v2 (random), for the server suites."""
    from exporter.pipeline import ExportRequest, export_model

    path = tmp_path_factory.mktemp("serve-repo")
    for name in ("lenet5", "mobilenet_v2"):
        export_model(ExportRequest(model=name, repository=path), progress=lambda _: None)
    return path
