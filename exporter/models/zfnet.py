"""ZFNet (Zeiler & Fergus, 2013), our own code.

AlexNet as revised after visualising it: a 7x7 stride-2 first layer (AlexNet:
11x11 stride 4) and a stride-2 second layer, so the early maps keep more
detail; one tower instead of two GPUs, hence 384/384/256 filters in conv3-5
as in the paper's Figure 3. Local response normalisation stands for the
paper's contrast normalisation.
"""

from __future__ import annotations

import torch
from torch import nn

from exporter.config import ModelCfg
from exporter.registry import register_model


class ZFNet(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=7, stride=2, padding=1),  # 224 -> 110
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),  # -> 55
            nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0),
            nn.Conv2d(96, 256, kernel_size=5, stride=2),  # -> 26
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),  # -> 13
            nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # -> 6
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.normal_(m.weight, std=0.01)  # the paper's initialisation
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


ZFNET = ModelCfg(
    name="zfnet",
    family="ZFNet",
    year=2013,
    source="ours",
    fixed_input_size=True,
    min_input_size=64,
    # conv 14,208 + 614,656 + 885,120 + 1,327,488 + 884,992; fc 37,752,832
    # + 16,781,312 + 4,097,000 (Fig. 3 layer table).
    reference_params=62_357_608,
    published_top1=61.6,
    top1_source="Zeiler & Fergus, Table 2 (one convnet, val)",
    paper="Visualizing and Understanding Convolutional Networks (2013)",
)


@register_model(ZFNET)
def zfnet(*, imagenet: bool = False) -> nn.Module:
    return ZFNet()
