"""Class activation maps at export: split a network into features -> pooled linear head.

For the families whose head is global average pooling then one linear layer
(ResNet, SE-ResNet, DenseNet, MobileNet v1/v2, EfficientNet and EfficientNet-Lite,
GoogLeNet, Inception v3, Xception) the exporter writes the last feature map as a
second ONNX output and the head's weights into the version folder (modelrepo/cam.py).
The exported module computes the logits *from* that feature map through the head,
so the usual parity check against the untouched PyTorch model proves the split.
Other heads (VGG/AlexNet's MLP, MobileNet v3's two linear layers, ConvNeXt's
LayerNorm, ViT's class token, LeNet) get no CAM, with the reason in export.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelrepo import cam as cam_data

FEATURES_OUTPUT = "cam_features"
_NO_CAM = "its head is not global average pooling then one linear layer"


@dataclass(frozen=True)
class CamSplit:
    features: Callable[[torch.Tensor], torch.Tensor]  # image batch -> last feature map
    head: nn.Linear


class CamExport(nn.Module):
    """(logits, features): the logits computed from the features, as the server will."""

    def __init__(self, model: nn.Module, split: CamSplit) -> None:
        super().__init__()
        self.model = model  # owns the parameters the features and head use
        self._features = split.features
        self.head = split.head
        # the model's mode, not nn.Module's default (training): the torchscript exporter
        # restores the wrapper's mode afterwards, and would put the model's BatchNorms
        # into training mode for the parity check that follows
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._features(x)
        return self.head(features.mean(dim=(2, 3))), features


_SPLITS: dict[str, Callable[[nn.Module], CamSplit | str]] = {}


def _register(*classes: str):
    def wrap(fn: Callable[[nn.Module], CamSplit | str]) -> Callable[[nn.Module], CamSplit | str]:
        for name in classes:
            _SPLITS[name] = fn
        return fn

    return wrap


def _class_path(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__name__}"


def _children_until(model: nn.Module, pool: str, skip: tuple[str, ...] = ()):
    """The model's children in order up to ``pool`` (torchvision's forward, minus aux heads)."""
    names = [name for name, _ in model.named_children()]
    layers = [getattr(model, n) for n in names[: names.index(pool)] if n not in skip]
    transform = getattr(model, "_transform_input", None)  # GoogLeNet/Inception's input rescale

    def features(x: torch.Tensor) -> torch.Tensor:
        x = transform(x) if transform is not None else x
        for layer in layers:
            x = layer(x)
        return x

    return features


@_register("torchvision.models.resnet.ResNet")
def _resnet(model: nn.Module) -> CamSplit:
    return CamSplit(_children_until(model, "avgpool"), model.fc)


@_register("torchvision.models.googlenet.GoogLeNet")
def _googlenet(model: nn.Module) -> CamSplit:
    return CamSplit(_children_until(model, "avgpool", skip=("aux1", "aux2")), model.fc)


@_register("torchvision.models.inception.Inception3")
def _inception(model: nn.Module) -> CamSplit:
    return CamSplit(_children_until(model, "avgpool", skip=("AuxLogits",)), model.fc)


@_register("torchvision.models.densenet.DenseNet")
def _densenet(model: nn.Module) -> CamSplit:
    return CamSplit(lambda x: F.relu(model.features(x)), model.classifier)


@_register(
    "torchvision.models.mobilenetv2.MobileNetV2", "torchvision.models.efficientnet.EfficientNet"
)
def _classifier_last(model: nn.Module) -> CamSplit:  # classifier = (Dropout, Linear)
    return CamSplit(model.features, model.classifier[-1])


@_register("efficientnet_lite_pytorch.model.EfficientNet")
def _lite(model: nn.Module) -> CamSplit:
    return CamSplit(model.extract_features, model._fc)


@_register(
    "timm.models.resnet.ResNet", "timm.models.efficientnet.EfficientNet",
    "timm.models.xception.Xception",
)  # fmt: skip
def _timm(model: nn.Module) -> CamSplit | str:
    pool = getattr(model.global_pool, "pool_type", "")
    if pool != "avg":
        return f"its global pooling is '{pool}', not average"
    return CamSplit(model.forward_features, model.get_classifier())


@_register("torchvision.models.mobilenetv3.MobileNetV3")
def _mobilenet_v3(model: nn.Module) -> str:
    return "its head is two linear layers (Linear, Hardswish, Linear) after the pooling"


@_register("torchvision.models.convnext.ConvNeXt")
def _convnext(model: nn.Module) -> str:
    return "a LayerNorm sits between the pooling and the linear layer"


def split_model(model: nn.Module) -> CamSplit | str:
    """How to split ``model`` for CAM, or the reason it has no CAM."""
    fn = _SPLITS.get(_class_path(model))
    found = fn(model) if fn is not None else _NO_CAM
    if isinstance(found, CamSplit) and not isinstance(found.head, nn.Linear):
        return f"its classifier is {type(found.head).__name__}, not one linear layer"
    return found


def prepare(model: nn.Module, enabled: bool, backend: str) -> tuple[nn.Module, CamSplit | str]:
    """The module to export (the model, or its CAM wrapper) and the split or why none."""
    if not enabled:
        return model, "exported with --no-cam"
    if backend == "tensorrt":
        return model, "TensorRT engines serve one output: exported without CAM"
    found = split_model(model)
    return (CamExport(model, found) if isinstance(found, CamSplit) else model), found


@torch.no_grad()
def write(version_dir: Path, found: CamSplit | str, input_size: tuple[int, ...]) -> dict[str, Any]:
    """cam_head.npz into ``version_dir``; the export.json "cam" section."""
    if isinstance(found, str):
        return {"available": False, "reason": found}
    head = found.head
    bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
    path = cam_data.write_head(version_dir, head.weight.float().numpy(), bias.float().numpy())
    shape = found.features(torch.zeros(1, *input_size)).shape
    return {
        "available": True,
        "features_output": FEATURES_OUTPUT,
        "features_shape": [-1, int(shape[1]), int(shape[2]), int(shape[3])],
        "head_file": path.name,
    }
