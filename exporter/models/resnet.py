"""ResNet (He et al., 2015): identity shortcuts make depth trainable."""

from __future__ import annotations

from exporter.models._sources import torchvision_builder, torchvision_cfg
from exporter.registry import register_alias, register_model

_PAPER = "Deep Residual Learning for Image Recognition (2015)"

for _name, _params in (
    ("resnet18", 11_689_512),
    ("resnet50", 25_557_032),
    ("resnet101", 44_549_160),
    ("resnet152", 60_192_808),
):
    register_model(
        torchvision_cfg(_name, family="ResNet", year=2015, reference_params=_params, paper=_PAPER)
    )(torchvision_builder(_name))

register_alias("resnet", "resnet50")
