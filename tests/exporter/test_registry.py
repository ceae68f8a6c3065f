"""The zoo: every model builds at its reference size, names resolve, MACs agree."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from exporter.config import ModelCfg
from exporter.macs import count_macs, count_params
from exporter.registry import (
    UnknownModelError,
    build_model,
    get_cfg,
    list_models,
    register_model,
    resolve_name,
)

REQUIRED = {
    "lenet5",
    "alexnet",
    "zfnet",
    "vgg16",
    "vgg19",
    "googlenet",
    "inception_v3",
    "resnet18",
    "resnet50",
    "resnet101",
    "resnet152",
    "densenet121",
    "seresnet50",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "xception",
    "convnext_tiny",
    "vit_b_16",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    *(f"efficientnet_b{i}" for i in range(8)),
}


def test_zoo_holds_every_required_model() -> None:
    assert REQUIRED <= set(list_models())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_builds_with_reference_parameter_count(name: str) -> None:
    cfg = get_cfg(name)
    torch.manual_seed(0)
    model = build_model(name)
    params = count_params(model)
    assert abs(params / cfg.reference_params - 1) <= 0.005, (params, cfg.reference_params)
    assert not model.training
    c, h, w = cfg.input_size
    assert c in (1, 3) and h == w >= cfg.min_input_size


def test_lenet_output_is_ten_digits() -> None:
    out = build_model("lenet5")(torch.zeros(2, 1, 32, 32))
    assert out.shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "published_gmacs"),
    [("resnet50", 4.1), ("mobilenet_v2", 0.30), ("efficientnet_b0", 0.39)],
)
def test_macs_match_published(name: str, published_gmacs: float) -> None:
    with torch.device("meta"):
        model = build_model(name)
    gmacs = count_macs(model, get_cfg(name).input_size) / 1e9
    assert abs(gmacs / published_gmacs - 1) <= 0.05, gmacs


@pytest.mark.parametrize(
    ("alias", "target"),
    [
        ("mobilenet", "mobilenet_v2"),
        ("efficientnet", "efficientnet_b0"),
        ("resnet", "resnet50"),
        ("vgg", "vgg16"),
        ("senet", "seresnet50"),
        ("inception", "inception_v3"),
        ("googlenet", "googlenet"),
        ("densenet", "densenet121"),
        ("convnext", "convnext_tiny"),
        ("vit", "vit_b_16"),
        ("lenet", "lenet5"),
        ("alexnet", "alexnet"),
        ("zfnet", "zfnet"),
        ("xception", "xception"),
        ("MobileNet", "mobilenet_v2"),
        ("efficientnet-b3", "efficientnet_b3"),
    ],
)
def test_aliases_resolve(alias: str, target: str) -> None:
    assert resolve_name(alias) == target


def test_unknown_name_lists_known_and_closest() -> None:
    with pytest.raises(UnknownModelError) as err:
        resolve_name("mobilnet_v2")
    text = str(err.value)
    assert "Did you mean 'mobilenet_v2'" in text
    assert "resnet152" in text and "vit_b_16" in text


def test_duplicate_registration_raises() -> None:
    cfg = ModelCfg(name="resnet50", family="ResNet", year=2015, source="ours")
    with pytest.raises(ValueError, match="already registered"):
        register_model(cfg)(lambda *, imagenet=False: torch.nn.Identity())


def test_list_cli_json_matches_registry() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {r["name"]: r for r in json.loads(out)["models"]}
    assert set(rows) == set(list_models())
    assert rows["vgg16"]["params"] == 138_357_544
    assert rows["lenet5"]["input_size"] == [1, 32, 32]
    assert 0.29 < rows["mobilenet_v2"]["gmacs"] < 0.31


def test_list_cli_table_shows_every_model() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "list"], capture_output=True, text=True, check=True
    ).stdout
    for name in list_models():
        assert name in out
    assert "138.36M" in out  # VGG-16's parameter count, formatted
