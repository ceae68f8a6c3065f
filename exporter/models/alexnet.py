"""AlexNet (Krizhevsky et al., 2012), torchvision's single-GPU variant."""

from __future__ import annotations

from exporter.models._sources import torchvision_builder, torchvision_cfg
from exporter.registry import register_alias, register_model

ALEXNET = torchvision_cfg(
    "alexnet",
    family="AlexNet",
    year=2012,
    # The 6x6 adaptive pool feeds a dense layer: smaller inputs are padded up
    # by the pool, so export is shape-fixed but any size >= 63 builds.
    fixed_input_size=True,
    min_input_size=63,
    reference_params=61_100_840,
    paper="ImageNet Classification with Deep Convolutional Neural Networks (2012)",
)

register_model(ALEXNET)(torchvision_builder("alexnet"))
register_alias("alexnet_v1", "alexnet")
