"""Per-model defaults, in the spirit of timm's PretrainedCfg.

Everything the server needs to turn a photo into the model's input (size,
resize, crop, mean/std, channels) and everything a reader of the zoo table
wants (year, published accuracy, reference parameter count) lives here, so it
is written once and copied into config.pbtxt and export.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Interpolation = Literal["nearest", "bilinear", "bicubic"]
LabelSet = Literal["imagenet", "digits"]
Source = Literal["torchvision", "timm", "ours", "efficientnet-lite-pytorch"]


@dataclass(frozen=True)
class ModelCfg:
    """What a model expects and what is known about it."""

    name: str
    family: str
    year: int
    source: Source
    input_size: tuple[int, int, int] = (3, 224, 224)
    num_classes: int = 1000
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize_size: int = 256  # shorter side before the centre crop
    interpolation: Interpolation = "bilinear"
    # True where the graph only works at input_size (e.g. a fixed 7x7 pooling
    # feeding a dense layer, or ViT's position embeddings).
    fixed_input_size: bool = False
    # Smallest H/W the architecture accepts; tests export at this size.
    min_input_size: int = 32
    labels: LabelSet = "imagenet"
    reference_params: int = 0
    published_top1: float | None = None
    top1_source: str = ""
    paper: str = ""
    # Offline weights that need no download ('pretrained'): None where none exist.
    default_weights: Literal["random", "pretrained"] = "random"
    upstream_name: str = ""  # torchvision/timm name used for --weights imagenet
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.input_size[0]

    @property
    def crop_size(self) -> int:
        return self.input_size[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
