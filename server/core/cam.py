"""Class activation maps (Zhou et al., 2016): where the class's evidence lies, in one pass.

For a head of global average pooling then one linear layer, the logit of class c
is ``mean over places of (W[c] · F[:, y, x]) + b[c]``: each place of the last
feature map F contributes ``W[c] · F[:, y, x]``. That map, in logit units and
signed (negative: evidence against the class), is upsampled bilinearly from the
feature grid (7x7 for a 224 input) to the input's height and width. The
feature map comes from the same forward pass as the logits (the exporter's
extra ONNX output, fetched only for these requests); the head is the version's
``cam_head.npz`` (modelrepo/cam.py).
"""

from __future__ import annotations

import numpy as np

from modelrepo.cam import CamHead
from server.core.errors import InvalidArgument


def bilinear_matrix(size: int, source: int) -> np.ndarray:
    """[size, source] weights of a bilinear resize (pixel centres aligned, edges clamped)."""
    centres = np.clip((np.arange(size) + 0.5) * source / size - 0.5, 0, source - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, source - 1)
    frac = centres - low
    matrix = np.zeros((size, source))
    np.add.at(matrix, (np.arange(size), low), 1 - frac)
    np.add.at(matrix, (np.arange(size), high), frac)
    return matrix


def class_maps(
    head: CamHead, features: np.ndarray, targets: list[int], height: int, width: int
) -> np.ndarray:
    """[N, height, width] FP32: image i's evidence for class ``targets[i]`` at each pixel."""
    if features.ndim != 4 or features.shape[1] != head.channels:
        raise InvalidArgument(
            f"feature map of shape {list(features.shape)} does not fit the CAM head's "
            f"{head.channels} channels"
        )
    n, channels, h, w = features.shape
    weights = head.weight[targets].astype(np.float64)[:, None, :]  # [N, 1, C]
    grid = weights @ features.reshape(n, channels, h * w).astype(np.float64)  # [N, 1, h*w]
    rows, cols = bilinear_matrix(height, h), bilinear_matrix(width, w)
    return (rows @ grid.reshape(n, h, w) @ cols.T).astype(np.float32)  # [N, height, width]
