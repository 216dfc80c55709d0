"""Classification models by name: the d2l CIFAR ResNet-18 and torchvision's ResNets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cvray.classification.models import ARCHS, build_model, d2l_resnet18
from cvray.errors import ConfigError


def test_d2l_resnet18_shapes_and_structure():
    net = d2l_resnet18(num_classes=10)
    out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    stem = net[0]
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))  # CIFAR stem: no 7x7, no max-pool
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    # 4 stages x 2 residual blocks, first stage keeps 64 channels at full resolution
    features = net[:4](torch.rand(1, 3, 32, 32))
    assert features.shape == (1, 64, 32, 32)
    assert net[:7](torch.rand(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(11.17e6, rel=0.01)


def test_xavier_init_on_every_conv_and_linear():
    torch.manual_seed(0)
    net = d2l_resnet18()
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight
            fan_in = w.shape[1] * w[0, 0].numel()
            fan_out = w.shape[0] * w[0, 0].numel()
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert w.abs().max() <= bound + 1e-6
            if w.numel() > 1000:  # uniform(-b, b) has std b / sqrt(3)
                assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)



@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_architecture_builds_with_the_class_count(arch):
    torch.manual_seed(0)
    net = build_model(arch, num_classes=3).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown architecture 'vgg11'.*d2l_resnet18"):
        build_model("vgg11", 10)
