"""The model zoo registry, modelled on torchvision's ``models/_api.py``.

Each family module registers its members with ``@register_model(cfg)``; a
builder is keyword-only and returns an ``nn.Module`` in eval mode. Weights are
not the builder's business beyond ``imagenet=True`` (the upstream download):
``exporter.weights`` decides which weights a model gets.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from exporter.config import ModelCfg

Builder = Callable[..., nn.Module]
# Offline, real weights for a model (shipped by a package or trained here):
# loads them into the module and returns provenance fields for the report.
PretrainedLoader = Callable[[nn.Module], dict]


class UnknownModelError(KeyError):
    """A model name that is neither registered nor an alias."""

    def __init__(self, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.4)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        super().__init__(f"unknown model '{name}'.{hint} Known models: {', '.join(known)}")
        self.name = name

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class RegisteredModel:
    cfg: ModelCfg
    builder: Builder
    pretrained: PretrainedLoader | None = None


_MODELS: dict[str, RegisteredModel] = {}
_ALIASES: dict[str, str] = {}


def register_model(
    cfg: ModelCfg, *, pretrained: PretrainedLoader | None = None
) -> Callable[[Builder], Builder]:
    """Register ``builder`` under ``cfg.name``; a duplicate name is a bug and raises."""

    def wrap(builder: Builder) -> Builder:
        if cfg.name in _MODELS or cfg.name in _ALIASES:
            raise ValueError(f"model '{cfg.name}' is already registered")
        _MODELS[cfg.name] = RegisteredModel(cfg=cfg, builder=builder, pretrained=pretrained)
        return builder

    return wrap


def register_alias(alias: str, target: str) -> None:
    """A family name (``mobilenet``) that resolves to its default member."""
    if alias in _MODELS or alias in _ALIASES:
        raise ValueError(f"alias '{alias}' clashes with a registered name")
    if target not in _MODELS:
        raise ValueError(f"alias '{alias}' points at unregistered model '{target}'")
    _ALIASES[alias] = target


def _load_families() -> None:
    # Importing the package registers every family (idempotent).
    import exporter.models  # noqa: F401


def resolve_name(name: str) -> str:
    """Registered name for ``name`` or an alias; raises UnknownModelError."""
    _load_families()
    key = name.strip().lower().replace("-", "_")
    if key in _MODELS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    raise UnknownModelError(name, sorted(_MODELS) + sorted(_ALIASES))


def get_entry(name: str) -> RegisteredModel:
    return _MODELS[resolve_name(name)]


def get_cfg(name: str) -> ModelCfg:
    return get_entry(name).cfg


def build_model(name: str, *, imagenet: bool = False) -> nn.Module:
    """Build ``name`` (random init unless ``imagenet``), in eval mode."""
    model = get_entry(name).builder(imagenet=imagenet)
    return model.eval()


def list_models() -> list[str]:
    """Registered names, in the zoo's historical order (year, then registration)."""
    _load_families()
    order = {name: i for i, name in enumerate(_MODELS)}
    return sorted(_MODELS, key=lambda n: (_MODELS[n].cfg.year, order[n]))


def aliases() -> dict[str, str]:
    _load_families()
    return dict(_ALIASES)
