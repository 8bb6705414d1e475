"""The ResNet bodies salis builds on (torchvision's, random init: weights come from a local file,
never a download). Apart from build.py so the pretrain stage loads this module only."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import resnet18, resnet34, resnet50

_BODIES: dict[str, tuple[Callable[..., nn.Module], list[int]]] = {
    "resnet18": (resnet18, [64, 128, 256, 512]),
    "resnet34": (resnet34, [64, 128, 256, 512]),
    "resnet50": (resnet50, [256, 512, 1024, 2048]),
}


def resnet_body(name: str, norm_layer: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    return _BODIES[name][0](weights=None, norm_layer=norm_layer)


def stage_channels(name: str) -> list[int]:
    """Output channels of layer1..layer4."""
    return list(_BODIES[name][1])


def resnet_feature_dim(name: str) -> int:
    """Channels of the last stage: the pooled feature's length."""
    return _BODIES[name][1][-1]
