"""Vision Transformer (Dosovitskiy et al., 2020): 16x16 patches as tokens."""

from __future__ import annotations

from exporter.models._sources import torchvision_builder, torchvision_cfg
from exporter.registry import register_alias, register_model

register_model(
    torchvision_cfg(
        "vit_b_16",
        family="ViT",
        year=2020,
        fixed_input_size=True,  # position embeddings are learnt for 14x14 patches
        min_input_size=224,
        reference_params=86_567_656,
        paper="An Image is Worth 16x16 Words (2020)",
    )
)(torchvision_builder("vit_b_16"))

register_alias("vit", "vit_b_16")
