"""MobileNet v1 (2017), v2 (2018) and v3 (2019): depthwise-separable
convolutions, inverted residuals, then NAS-tuned blocks with h-swish."""

from __future__ import annotations

from exporter.models._sources import timm_builder, timm_cfg, torchvision_builder, torchvision_cfg
from exporter.registry import register_alias, register_model

register_model(
    timm_cfg(
        "mobilenetv1_100",
        name="mobilenet_v1",
        family="MobileNet",
        year=2017,
        reference_params=4_231_976,
        published_top1=70.6,
        top1_source="Howard et al., Table 8 (1.0 MobileNet-224)",
        paper="MobileNets: Efficient Convolutional Neural Networks for Mobile Vision (2017)",
    )
)(timm_builder("mobilenetv1_100"))

for _name, _year, _params, _paper in (
    ("mobilenet_v2", 2018, 3_504_872, "MobileNetV2: Inverted Residuals and Linear Bottlenecks"),
    ("mobilenet_v3_large", 2019, 5_483_032, "Searching for MobileNetV3"),
    ("mobilenet_v3_small", 2019, 2_542_856, "Searching for MobileNetV3"),
):
    register_model(
        torchvision_cfg(
            _name, family="MobileNet", year=_year, reference_params=_params, paper=_paper
        )
    )(torchvision_builder(_name))

register_alias("mobilenet", "mobilenet_v2")
register_alias("mobilenet_v3", "mobilenet_v3_large")
