"""VGG (Simonyan & Zisserman, 2014): depth from stacked 3x3 convolutions."""

from __future__ import annotations

from exporter.models._sources import torchvision_builder, torchvision_cfg
from exporter.registry import register_alias, register_model

_PAPER = "Very Deep Convolutional Networks for Large-Scale Image Recognition (2014)"

for _name, _params in (("vgg16", 138_357_544), ("vgg19", 143_667_240)):
    register_model(
        torchvision_cfg(
            _name,
            family="VGG",
            year=2014,
            fixed_input_size=True,  # 7x7 adaptive pool into a 25088-wide dense layer
            min_input_size=32,
            reference_params=_params,
            paper=_PAPER,
        )
    )(torchvision_builder(_name))

register_alias("vgg", "vgg16")
