"""Which weights a model gets, and a record of where they came from.

The record (``Provenance``) travels into export.json and config.pbtxt so that
nobody mistakes a randomly initialised network for a trained classifier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exporter.config import ModelCfg
from exporter.registry import build_model, get_entry, list_models

KEYWORDS = ("random", "imagenet", "pretrained")


class WeightsError(ValueError):
    """Weights that cannot be had or do not fit the model."""


@dataclass(frozen=True)
class Provenance:
    kind: str  # random | imagenet | pretrained | file
    trained: bool
    description: str
    seed: int | None = None
    source: str | None = None
    file: str | None = None
    sha256: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reinit_zero_layers(model: nn.Module) -> int:
    """Give all-zero Linear/Conv weights a small random init.

    torchvision starts some heads at zero (ViT's classifier), which makes a
    random network answer zeros for every input, so a parity check would
    compare zeros with zeros. Returns how many layers were touched.
    """
    touched = 0
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and not module.weight.detach().any():
            nn.init.trunc_normal_(module.weight, std=0.02)
            touched += 1
    return touched


@torch.no_grad()
def _calibrate_batchnorm(model: nn.Module, size: tuple[int, int, int], seed: int) -> bool:
    """Set BatchNorm running statistics from a few random batches.

    Fresh BN layers hold mean 0 / var 1, so in eval mode a network whose init
    shrinks activations (GoogLeNet's std-0.01 convolutions) returns the same
    logits for every image. Statistics measured on inputs make the random
    network behave like a trained one numerically: outputs differ per image.
    They are measured at the size the model will run at: statistics from
    small inputs blow up at large ones (EfficientNet-B7 at 600x600 then
    disagrees with itself between float32 and float64).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(2):
        model(torch.randn(4, *size, generator=gen))
    model.eval()
    return True


def _random(name: str, seed: int, input_size: tuple[int, int, int]) -> tuple[nn.Module, Provenance]:
    torch.manual_seed(seed)
    model = build_model(name)
    touched = _reinit_zero_layers(model)
    calibrated = _calibrate_batchnorm(model, input_size, seed)
    note = f"; {touched} zero-initialised layer(s) re-drawn" if touched else ""
    note += "; BatchNorm statistics set from random inputs" if calibrated else ""
    return model, Provenance(
        kind="random",
        trained=False,
        seed=seed,
        description=f"random initialisation (seed {seed}){note}: NOT a trained classifier",
    )


def _imagenet(name: str, cfg: ModelCfg) -> tuple[nn.Module, Provenance]:
    if not cfg.upstream_name:
        offline = " or 'pretrained'" if get_entry(name).pretrained else ""
        raise WeightsError(
            f"{name} has no torchvision/timm ImageNet weights to download; "
            f"use --weights random{offline}, or a state_dict file"
        )
    try:
        model = build_model(name, imagenet=True)
    except Exception as exc:  # network, hub and cache errors all land here
        raise WeightsError(
            f"could not fetch ImageNet weights for {name} from {cfg.source} "
            f"({type(exc).__name__}: {exc}). This needs internet access (or a filled "
            f"torch/huggingface cache); offline, use --weights random or a state_dict file"
        ) from exc
    return model, Provenance(
        kind="imagenet",
        trained=True,
        source=f"{cfg.source} pretrained weights for {cfg.upstream_name}",
        description=f"ImageNet-1k weights from {cfg.source} ({cfg.upstream_name})",
    )


def _pretrained(name: str, seed: int) -> tuple[nn.Module, Provenance]:
    loader = get_entry(name).pretrained
    if loader is None:
        have = [m for m in list_models() if get_entry(m).pretrained is not None]
        raise WeightsError(
            f"{name} has no offline pretrained weights; models that do: {', '.join(have)}. "
            f"Use --weights imagenet (download), random, or a state_dict file"
        )
    torch.manual_seed(seed)
    model = build_model(name)
    info = loader(model)
    return model.eval(), Provenance(
        kind="pretrained",
        trained=bool(info.get("trained", True)),
        seed=seed,
        source=info.get("source"),
        file=info.get("file"),
        sha256=info.get("sha256"),
        metrics=dict(info.get("metrics", {})),
        description=str(info.get("description") or info.get("source")),
    )


def _unwrap_state_dict(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return obj


def _from_file(name: str, spec: str, seed: int) -> tuple[nn.Module, Provenance]:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights '{spec}': no such file. --weights takes one of {', '.join(KEYWORDS)} "
            f"or the path of a state_dict saved with torch.save"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read {path} as a PyTorch state_dict: {exc}") from exc
    state = _unwrap_state_dict(obj, path)
    torch.manual_seed(seed)
    model = build_model(name)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit {name}: {len(missing)} missing key(s) {missing[:8]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:8]}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsError(f"{path} does not fit {name}: {exc}") from exc
    return model.eval(), Provenance(
        kind="file",
        trained=True,
        file=str(path.resolve()),
        sha256=file_sha256(path),
        description=f"state_dict from {path.name} (sha256 {file_sha256(path)[:12]})",
    )


def load_with_weights(
    name: str,
    weights: str | None,
    seed: int = 0,
    input_size: tuple[int, int, int] | None = None,
) -> tuple[nn.Module, Provenance]:
    """Build ``name`` with ``weights``: random | imagenet | pretrained | a file path.

    ``None`` picks the model's default (offline pretrained weights where they
    exist, random otherwise). ``input_size`` (C, H, W) is the size the model
    will run at, used to calibrate a random network's BatchNorm statistics.
    """
    entry = get_entry(name)
    name = entry.cfg.name
    spec = weights or entry.cfg.default_weights
    if spec == "random":
        model, prov = _random(name, seed, input_size or entry.cfg.input_size)
    elif spec == "imagenet":
        model, prov = _imagenet(name, entry.cfg)
    elif spec == "pretrained":
        model, prov = _pretrained(name, seed)
    else:
        model, prov = _from_file(name, spec, seed)
    return model.eval(), prov
