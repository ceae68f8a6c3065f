"""Parameter and multiply-accumulate counts.

MACs come from torch's own FlopCounterMode (convolutions, matmuls and their
batched forms; FLOPs = 2 x MACs), run once on a batch-1 input. Element-wise
work (activations, BN, pooling) is not counted, matching how papers quote
"FLOPs".
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """MACs for one image of ``input_size`` (C, H, W).

    Works on a model built on the meta device too (shapes only, no compute),
    which is how ``exporter list`` sizes the whole zoo in seconds.
    """
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_size, device=device))
    return counter.get_total_flops() // 2
