"""Bulk stylisation's Ray-free parts: processing sizes, the minimum size, the folder config."""

from __future__ import annotations

import pytest
from PIL import Image

from cvray.style.bulk import min_side, size_checker
from cvray.style.config import StyleConfig, StylizeFolderConfig


def test_processing_size_and_minimum():
    lab = StyleConfig()
    assert lab.replace(size=48).output_size(64, 32) == (24, 48)  # (H, W), long side 48
    assert lab.replace(size=48).output_size(30, 20) == (20, 30)  # never upscaled
    assert lab.replace(size=None).output_size(999, 5) == (5, 999)
    assert lab.replace(shape=(20, 30)).output_size(64, 64) == (20, 30)
    assert min_side(lab) == 16  # conv5_1 comes after 4 max-pools
    assert min_side(lab.replace(style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_2",))) == 2
    assert min_side(lab.replace(style_layers=("pool5",))) == 32


def test_decode_tasks_size_images_as_the_stylizer_does():
    torch = pytest.importorskip("torch")
    from cvray.style.stylizer import Stylizer

    layers, channels = [], 3
    for convs in (1, 1, 1, 2, 1):  # a narrow VGG with the lab's layer names up to conv5_1
        for _ in range(convs):
            layers += [torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(inplace=True)]
            channels = 4
        layers.append(torch.nn.MaxPool2d(2))
    tiny = torch.nn.Sequential(*layers[:-1])
    style = Image.new("RGB", (32, 32), (0, 0, 255))
    for config in (StyleConfig(size=48), StyleConfig(size=None), StyleConfig(shape=(20, 30))):
        config = config.replace(style_layers=("relu1_1", "conv5_1"), content_layers=("relu4_2",))
        stylizer = Stylizer(config, [style], features=tiny)
        size_for = size_checker(config, minimum=1)
        for w, h in [(64, 32), (33, 100), (48, 48), (10, 7), (1000, 3), (47, 49)]:
            prepared = stylizer.prepare_content(Image.new("RGB", (w, h)))
            assert size_for(w, h) == tuple(prepared.shape[1:])


def test_folder_config_round_trips_with_nested_style():
    config = StylizeFolderConfig(style=StyleConfig(size=48, iterations=2), input="in", output="out",
                                 style_images=("s.png",), num_actors=2, use_gpu=False)
    again = StylizeFolderConfig.from_dict(config.to_dict())
    assert again == config and isinstance(again.style, StyleConfig)
