"""ConvNeXt (Liu et al., 2022): a ResNet modernised with Transformer-era choices."""

from __future__ import annotations

from exporter.models._sources import torchvision_builder, torchvision_cfg
from exporter.registry import register_alias, register_model

register_model(
    torchvision_cfg(
        "convnext_tiny",
        family="ConvNeXt",
        year=2022,
        reference_params=28_589_128,
        paper="A ConvNet for the 2020s (2022)",
    )
)(torchvision_builder("convnext_tiny"))

register_alias("convnext", "convnext_tiny")
