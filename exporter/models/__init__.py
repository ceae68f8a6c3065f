"""The zoo: importing this package registers every family, oldest first."""

from exporter.models import (  # noqa: F401
    lenet,
    alexnet,
    zfnet,
    vgg,
    inception,
    resnet,
    densenet,
    mobilenet,
    xception,
    senet,
    efficientnet,
    vit,
    convnext,
)
