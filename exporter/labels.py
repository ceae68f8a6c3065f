"""Class names, from sources that need no download."""

from __future__ import annotations

from functools import cache

from exporter.config import LabelSet


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, from torchvision's weights metadata."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def labels_for(label_set: LabelSet, num_classes: int) -> list[str]:
    if label_set == "digits":
        labels = [str(d) for d in range(10)]
    elif label_set == "imagenet":
        labels = list(imagenet_labels())
    else:
        raise ValueError(f"unknown label set '{label_set}': choose 'imagenet' or 'digits'")
    if len(labels) != num_classes:
        raise ValueError(f"{label_set} has {len(labels)} labels but the model has {num_classes}")
    return labels
