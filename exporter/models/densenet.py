"""DenseNet (Huang et al., 2017): every layer sees every earlier map."""

from __future__ import annotations

from exporter.models._sources import torchvision_builder, torchvision_cfg
from exporter.registry import register_alias, register_model

register_model(
    torchvision_cfg(
        "densenet121",
        family="DenseNet",
        year=2017,
        reference_params=7_978_856,
        paper="Densely Connected Convolutional Networks (2017)",
    )
)(torchvision_builder("densenet121"))

register_alias("densenet", "densenet121")
