"""Xception (Chollet, 2017): Inception taken to depthwise-separable extremes.

timm keeps Chollet's original network as ``legacy_xception`` (299x299).
"""

from __future__ import annotations

from exporter.models._sources import timm_builder, timm_cfg
from exporter.registry import register_model

register_model(
    timm_cfg(
        "legacy_xception",
        name="xception",
        family="Xception",
        year=2017,
        min_input_size=71,
        reference_params=22_855_952,
        published_top1=79.0,
        top1_source="Chollet, Table 1 (ImageNet val, single crop)",
        paper="Xception: Deep Learning with Depthwise Separable Convolutions (2017)",
    )
)(timm_builder("legacy_xception"))
