"""Builders and configs for models that come from torchvision or timm.

Family files state what is specific to each model (year, paper, reference
figures); the mechanics of asking torchvision/timm for a network, and of
reading their preprocessing metadata offline, live here once.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from exporter.config import ModelCfg


def torchvision_cfg(upstream: str, **fields: Any) -> ModelCfg:
    """A ModelCfg whose preprocessing and published top-1 come from the
    DEFAULT weights' metadata (shipped inside torchvision, no download)."""
    import torchvision

    weights = torchvision.models.get_model_weights(upstream).DEFAULT
    tf = weights.transforms()
    crop = int(tf.crop_size[0])
    fields.setdefault("name", upstream)
    return ModelCfg(
        source="torchvision",
        upstream_name=upstream,
        input_size=(3, crop, crop),
        mean=tuple(float(m) for m in tf.mean),
        std=tuple(float(s) for s in tf.std),
        resize_size=int(tf.resize_size[0]),
        interpolation=tf.interpolation.value,
        published_top1=float(weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]),
        top1_source=f"torchvision {weights}",
        **fields,
    )


def torchvision_builder(upstream: str, **random_kwargs: Any):
    """Builder for ``torchvision.models.get_model(upstream)``.

    ``random_kwargs`` apply to the random-init build only (torchvision fixes
    them itself when it loads pretrained weights, e.g. GoogLeNet's aux heads).
    """

    def build(*, imagenet: bool = False) -> nn.Module:
        import torchvision

        if imagenet:
            return torchvision.models.get_model(upstream, weights="DEFAULT")
        return torchvision.models.get_model(upstream, weights=None, **random_kwargs)

    return build


def timm_cfg(upstream: str, **fields: Any) -> ModelCfg:
    """A ModelCfg from timm's pretrained_cfg for ``upstream`` (offline)."""
    import timm

    pcfg = timm.models.get_pretrained_cfg(upstream)
    _, height, _ = pcfg.input_size
    return ModelCfg(
        source="timm",
        upstream_name=upstream,
        input_size=tuple(pcfg.input_size),
        mean=tuple(pcfg.mean),
        std=tuple(pcfg.std),
        resize_size=int(round(height / pcfg.crop_pct)),
        interpolation=pcfg.interpolation,
        **fields,
    )


def timm_builder(upstream: str):
    def build(*, imagenet: bool = False) -> nn.Module:
        import timm

        return timm.create_model(upstream, pretrained=imagenet)

    return build
