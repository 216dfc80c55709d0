"""Classification models by architecture name, plain PyTorch: the d2l CIFAR ResNet-18 and
torchvision's ResNets. (VGG feature taps for style transfer live in cvray.style.vgg.)

torchvision is imported only where one of its models is built: importing it costs about 3 s of
CPU here (it pulls in torch._dynamo), in every Ray Train worker and controller of a CIFAR run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cvray.errors import ConfigError, DataError, first_line
from cvray.state_dicts import read_state_dict


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
    import torchvision

    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50")
ARCHS: dict[str, Callable[[int], nn.Module]] = {
    "d2l_resnet18": d2l_resnet18,
    **{name: (lambda n, name=name: torchvision_resnet(name, n)) for name in TORCHVISION_RESNETS},
}
"""Architecture name -> factory(num_classes) -> model taking float (B, 3, H, W), giving logits."""
IMAGENET_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights"}
"""Architecture -> its torchvision weights enum (in torchvision.models); IMAGENET1K_V1 is the lab's."""


def build_model(arch: str, num_classes: int) -> nn.Module:
    """The model `arch` (a key of ARCHS) for `num_classes` classes, freshly initialised."""
    _check_arch(arch)
    return ARCHS[arch](num_classes)


def head_name(arch: str) -> str:
    """The name of the output layer (its parameters are `<name>.weight` / `<name>.bias`)."""
    _check_arch(arch)
    return "9" if arch == "d2l_resnet18" else "fc"  # d2l: the last module of its Sequential


def input_size(arch: str) -> int:
    """The side (px) the architecture was designed for: 32 for the d2l CIFAR net, 224 for ResNets."""
    _check_arch(arch)
    return 32 if arch == "d2l_resnet18" else 224


def replace_head(model: nn.Module, arch: str, num_classes: int) -> nn.Module:
    """Swap the output layer for a new Linear(in_features, num_classes): Xavier-uniform weight,
    torch's default bias (the fine-tuning lab's `nn.init.xavier_uniform_(finetune_net.fc.weight)`)."""
    name = head_name(arch)
    old = model.get_submodule(name)
    head = nn.Linear(old.in_features, num_classes)
    nn.init.xavier_uniform_(head.weight)
    if arch == "d2l_resnet18":
        model[int(name)] = head
    else:
        setattr(model, name, head)
    return model


def pretrained_backbone(arch: str, weights: str | None) -> nn.Module:
    """A torchvision ResNet with pretrained weights (its 1000-way ImageNet head still on).

    weights: None -> torchvision's IMAGENET1K_V1 through the weights API (downloaded once into
    torch's cache; DataError when that fails, e.g. offline); otherwise a local path or URI of a
    state dict in torchvision's layout (with or without the fc layer), loaded with weights_only.
    """
    if arch not in IMAGENET_WEIGHTS:
        raise ConfigError(f"--arch {arch} has no ImageNet weights; use one of {', '.join(IMAGENET_WEIGHTS)}, "
                          "--scratch, or --init-from a run")
    import torchvision

    if weights is None:
        enum = getattr(torchvision.models, IMAGENET_WEIGHTS[arch]).IMAGENET1K_V1
        try:
            return getattr(torchvision.models, arch)(weights=enum)
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            raise DataError(f"cannot load {arch} {enum} ({first_line(exc)}); offline? pass --weights PATH "
                            "(a torchvision state dict) or --scratch") from None
    model = getattr(torchvision.models, arch)(weights=None)
    state = read_state_dict(weights)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # a head for other classes
    missing = sorted(k for k in own if not k.startswith("fc.") and k not in state)
    wrong = sorted(k for k in state if k not in own or state[k].shape != own[k].shape)
    if missing or wrong:
        detail = f"missing {missing[:3]}" if missing else f"unexpected or mis-shaped {wrong[:3]}"
        raise DataError(f"{weights}: not {arch} weights in torchvision's layout ({detail})")
    model.load_state_dict(state, strict=False)
    return model


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
