"""SENet (Hu et al., 2018): squeeze-and-excitation channel attention, on ResNet-50."""

from __future__ import annotations

from exporter.models._sources import timm_builder, timm_cfg
from exporter.registry import register_alias, register_model

register_model(
    timm_cfg(
        "seresnet50",
        name="seresnet50",
        family="SENet",
        year=2018,
        reference_params=28_088_024,
        published_top1=77.63,
        top1_source="Hu et al., Table 2 (SE-ResNet-50, single crop)",
        paper="Squeeze-and-Excitation Networks (2018)",
    )
)(timm_builder("seresnet50"))

register_alias("senet", "seresnet50")
