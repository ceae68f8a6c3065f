"""LeNet-5 (LeCun et al., 1998), our own code.

The 1998 layout on a 1x32x32 input: C1 6@5x5, S2 2x2 subsampling, C3 16@5x5,
S4, C5 120 (a 5x5 convolution that sees the whole map), F6 84, and a linear
10-way output in place of the paper's RBF units. tanh throughout, as in the
paper. C3 is fully connected (the paper's sparse table is a 1998 compute
trick), which gives 61,706 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from exporter.config import ModelCfg
from exporter.registry import register_alias, register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5),  # C1: 32 -> 28
            nn.Tanh(),
            nn.AvgPool2d(2),  # S2: 28 -> 14
            nn.Conv2d(6, 16, kernel_size=5),  # C3: 14 -> 10
            nn.Tanh(),
            nn.AvgPool2d(2),  # S4: 10 -> 5
            nn.Conv2d(16, 120, kernel_size=5),  # C5: 5 -> 1
            nn.Tanh(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(120, 84),  # F6
            nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _train_on_digits(model: nn.Module) -> dict:
    from exporter.digits import load_or_train_lenet  # late: digits imports the registry

    return load_or_train_lenet(model)


LENET5 = ModelCfg(
    name="lenet5",
    family="LeNet",
    year=1998,
    source="ours",
    input_size=(1, 32, 32),
    num_classes=10,
    mean=(0.5,),
    std=(0.5,),
    resize_size=32,
    fixed_input_size=True,
    min_input_size=32,
    labels="digits",
    reference_params=61_706,
    paper="Gradient-based learning applied to document recognition (LeCun et al., 1998)",
    default_weights="pretrained",
)


@register_model(LENET5, pretrained=_train_on_digits)
def lenet5(*, imagenet: bool = False) -> nn.Module:
    return LeNet5()


register_alias("lenet", "lenet5")
