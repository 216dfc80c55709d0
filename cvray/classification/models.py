"""Classification models by architecture name, plain PyTorch: the d2l CIFAR ResNet-18 and
torchvision's ResNets. (VGG feature taps for style transfer live in cvray.style.vgg.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from cvray.errors import ConfigError


class Residual(nn.Module):
    """d2l's residual block: two 3x3 convs with BN; a 1x1 conv on the skip when shapes change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        needs_projection = stride != 1 or in_channels != out_channels
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = self.conv3(x) if self.conv3 is not None else x
        return torch.relu(y + skip)


def _stage(in_channels: int, out_channels: int, num_blocks: int, first: bool) -> nn.Sequential:
    """A ResNet stage; every stage but the first halves the resolution in its first block."""
    blocks = []
    for i in range(num_blocks):
        if i == 0 and not first:
            blocks.append(Residual(in_channels, out_channels, stride=2))
        else:
            blocks.append(Residual(out_channels if i else in_channels, out_channels))
    return nn.Sequential(*blocks)


def d2l_resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """The lab's ResNet-18 for 32x32 inputs: 3x3 stride-1 stem, no max-pool, Xavier init.

    Input (B, in_channels, H, W) float; output (B, num_classes) logits. Feature maps stay at
    32x32 through the first stage, so it costs ~0.56 GFLOP per 32x32 image forward.
    """
    net = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        _stage(64, 64, 2, first=True),
        _stage(64, 128, 2, first=False),
        _stage(128, 256, 2, first=False),
        _stage(256, 512, 2, first=False),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    )
    net.apply(xavier_init)
    return net


def xavier_init(module: nn.Module) -> None:
    """The lab's init: Xavier-uniform weights on every Linear and Conv2d (biases keep torch's)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)


def torchvision_resnet(arch: str, num_classes: int) -> nn.Module:
    """torchvision's ResNet `arch` (its default init) with a `num_classes`-way fc head."""
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


ARCHS: dict[str, Callable[[int], nn.Module]] = {
    "d2l_resnet18": d2l_resnet18,
    **{name: (lambda n, name=name: torchvision_resnet(name, n)) for name in ("resnet18", "resnet34", "resnet50")},
}
"""Architecture name -> factory(num_classes) -> model taking float (B, 3, H, W), giving logits."""


def build_model(arch: str, num_classes: int) -> nn.Module:
    """The model `arch` (a key of ARCHS) for `num_classes` classes, freshly initialised."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[arch](num_classes)
