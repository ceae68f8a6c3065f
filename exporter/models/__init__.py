"""The zoo: importing this package registers every family, oldest first."""

from exporter.models import (  # noqa: F401
    alexnet,
    convnext,
    densenet,
    efficientnet,
    inception,
    lenet,
    mobilenet,
    resnet,
    senet,
    vgg,
    vit,
    xception,
    zfnet,
)
