"""Class activation map data in a version folder: the linear head after global pooling.

A model whose head is global average pooling then one linear layer has logits
``W @ mean_hw(F) + b``; the exporter writes ``W`` [classes, C] and ``b`` [classes]
to ``<version>/cam_head.npz`` and names the ONNX output holding ``F`` [N, C, h, w]
in config.pbtxt (``cam_features_output``). ``W[c] · F`` at each place is then the
class's evidence there (Zhou et al., 2016), its mean plus ``b[c]`` the logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelrepo.keys import CAM_FEATURES_OUTPUT, CAM_HEAD_FILE
from modelrepo.reading import DEFAULT_LIMITS, UnsafeFileError, load_npz
from protos import model_config_pb2 as mc


class CamDataError(ValueError):
    """A cam_head.npz that does not fit its model."""


@dataclass(frozen=True, eq=False)
class CamHead:
    features_output: str  # the ONNX output holding the last feature map
    weight: np.ndarray  # [classes, C] float32
    bias: np.ndarray  # [classes] float32

    @property
    def channels(self) -> int:
        return int(self.weight.shape[1])


def features_output(config: mc.ModelConfig) -> str:
    """The feature-map output's name; "" when the model has no CAM data."""
    params = config.parameters
    return params[CAM_FEATURES_OUTPUT].string_value if CAM_FEATURES_OUTPUT in params else ""


def write_head(version_dir: Path, weight: np.ndarray, bias: np.ndarray) -> Path:
    path = Path(version_dir) / CAM_HEAD_FILE
    check_head(path, np.asarray(weight, np.float32), np.asarray(bias, np.float32), None)
    np.savez(path, weight=np.asarray(weight, np.float32), bias=np.asarray(bias, np.float32))
    return path


def check_head(path: Path, weight: np.ndarray, bias: np.ndarray, classes: int | None) -> None:
    """Shapes and values that make a head: raises CamDataError naming what is wrong."""
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise CamDataError(
            f"{path}: weight must be [classes, C] and bias [classes], "
            f"got {list(weight.shape)} and {list(bias.shape)}"
        )
    if classes is not None and weight.shape[0] != classes:
        raise CamDataError(f"{path}: {weight.shape[0]} classes, the model's output has {classes}")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise CamDataError(f"{path}: the head holds NaN or infinite values")


def read_head(
    config: mc.ModelConfig, version_dir: Path, max_bytes: int = DEFAULT_LIMITS.cam_head_bytes
) -> CamHead | None:
    """The CAM data of one version (None: the config names no feature output)."""
    name = features_output(config)
    if not name:
        return None
    path = Path(version_dir) / CAM_HEAD_FILE
    try:
        data = load_npz(path, max_bytes)
        weight = np.asarray(data["weight"], np.float32)
        bias = np.asarray(data["bias"], np.float32)
    except (UnsafeFileError, KeyError, ValueError) as exc:
        raise CamDataError(
            f"{path}: config.pbtxt names {CAM_FEATURES_OUTPUT} '{name}' but the head's "
            f"weights cannot be read ({exc}); re-export, or export with --no-cam"
        ) from exc
    check_head(path, weight, bias, int(np.prod(config.output[0].dims)))
    return CamHead(features_output=name, weight=weight, bias=bias)
