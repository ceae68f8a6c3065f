"""GoogLeNet / Inception v1 (Szegedy et al., 2014) and Inception v3 (2015).

Exported without the auxiliary training heads (they only run in training).
"""

from __future__ import annotations

from exporter.models._sources import torchvision_builder, torchvision_cfg
from exporter.registry import register_alias, register_model

register_model(
    torchvision_cfg(
        "googlenet",
        family="Inception",
        year=2014,
        min_input_size=32,
        reference_params=6_624_904,
        paper="Going Deeper with Convolutions (2014)",
    )
)(torchvision_builder("googlenet", aux_logits=False, init_weights=True))

register_model(
    torchvision_cfg(
        "inception_v3",
        family="Inception",
        year=2015,
        min_input_size=75,
        reference_params=23_834_568,
        paper="Rethinking the Inception Architecture for Computer Vision (2015)",
    )
)(torchvision_builder("inception_v3", aux_logits=False, init_weights=True))

register_alias("inception", "inception_v3")
register_alias("googlenet_v1", "googlenet")
