"""VGG taps by name, the lab's in-place-ReLU capture, and loading local weights (no network)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.lab_style import LAB_CONTENT_LAYERS, LAB_STYLE_LAYERS, extract_features, lab_net
from cvray.errors import ConfigError, DataError
from cvray.style.vgg import (
    VGGTaps,
    arch_layer_names,
    build_vgg_features,
    default_content_layers,
    layer_names,
)


@pytest.fixture(scope="module")
def vgg19_random():
    torch.manual_seed(0)
    return build_vgg_features("vgg19", "random")


def test_names_match_torchvision_indices(vgg19_random):
    names = arch_layer_names("vgg19")
    assert names == layer_names(vgg19_random)
    assert len(names) == len(vgg19_random) == 37
    lab = {i: names[i] for i in LAB_STYLE_LAYERS + LAB_CONTENT_LAYERS}
    assert lab == {0: "conv1_1", 5: "conv2_1", 10: "conv3_1", 19: "conv4_1", 28: "conv5_1",
                   25: "conv4_4"}
    vgg16 = arch_layer_names("vgg16")
    assert len(vgg16) == len(build_vgg_features("vgg16", "random")) == 31
    assert vgg16[28] == "conv5_3" and "conv4_4" not in vgg16
    assert default_content_layers("vgg19") == ("relu4_4",)
    assert default_content_layers("vgg16") == ("relu4_3",)


def test_lab_taps_are_relu_outputs_because_relus_are_in_place(vgg19_random):
    """The lab captures conv outputs that the next in-place ReLU overwrites: what it uses is
    relu1_1..relu4_1, conv5_1 (the net ends there) and relu4_4 (layer 25)."""
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    net = lab_net(vgg19_random)
    with torch.no_grad():
        lab_contents, lab_styles = extract_features(net, x, LAB_CONTENT_LAYERS, LAB_STYLE_LAYERS)
    style_names = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "conv5_1"]
    taps = VGGTaps(vgg19_random, style_names + ["relu4_4", "conv1_1", "conv4_4"])
    with torch.no_grad():
        ours = taps(x)
    for name, lab_tensor in zip(style_names, lab_styles, strict=True):
        torch.testing.assert_close(ours[name], lab_tensor, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["relu4_4"], lab_contents[0], rtol=1e-5, atol=1e-6)
    # our conv taps are the real conv outputs (negative values survive), unlike the lab's
    assert ours["conv1_1"].min() < 0 and lab_styles[0].min() >= 0
    assert ours["conv4_4"].min() < 0 and lab_contents[0].min() >= 0
    torch.testing.assert_close(ours["conv1_1"].clamp_min(0), ours["relu1_1"])
    # the lab's conv5_1 is the last layer of its net: no ReLU after it
    assert lab_styles[-1].min() < 0


def test_taps_stop_after_deepest_layer(vgg19_random):
    taps = VGGTaps(vgg19_random, ["relu2_1", "conv1_2"])
    assert len(taps.layers) == 7  # conv1_1 .. relu2_1
    out = taps(torch.rand(2, 3, 32, 32))
    assert set(out) == {"relu2_1", "conv1_2"}
    assert out["relu2_1"].shape == (2, 128, 16, 16)


def test_unknown_layer_names_list_the_valid_ones(vgg19_random):
    with pytest.raises(ConfigError) as info:
        VGGTaps(vgg19_random, ["relu4_2", "relu6_1", "conv_bad"])
    message = str(info.value)
    assert "relu6_1" in message and "conv_bad" in message and "relu5_4" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="unknown arch"):
        build_vgg_features("vgg11", "random")


def _random_vgg16_state(dtype) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return {k: v.to(dtype) for k, v in build_vgg_features("vgg16", "random").state_dict().items()}


@pytest.mark.parametrize("layout", ["features_only", "full_model"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_load_local_weights_in_both_layouts(tmp_path, layout, dtype):
    state = _random_vgg16_state(dtype)
    saved = state if layout == "features_only" else {
        **{f"features.{k}": v for k, v in state.items()},
        "classifier.0.weight": torch.zeros(4, 4),  # a full model's head: ignored
    }
    path = tmp_path / "vgg16.pth"
    torch.save(saved, path)
    features = build_vgg_features("vgg16", str(path))
    assert not features.training
    assert all(not p.requires_grad for p in features.parameters())
    loaded = features.state_dict()
    assert loaded["0.weight"].dtype == torch.float32 and loaded["0.weight"].device.type == "cpu"
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value.float(), rtol=0, atol=0)


def test_bad_weight_files_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_vgg_features("vgg16", str(tmp_path / "missing.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint")
    with pytest.raises(DataError, match="not a readable PyTorch state dict"):
        build_vgg_features("vgg16", str(corrupt))
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(DataError, match="expected a state dict"):
        build_vgg_features("vgg16", str(a_list))
    vgg16_file = tmp_path / "vgg16.pth"
    torch.save(_random_vgg16_state(torch.float16), vgg16_file)
    with pytest.raises(DataError, match="try --arch vgg16") as info:
        build_vgg_features("vgg19", str(vgg16_file))
    assert "\n" not in str(info.value)
    wrong_shape = _random_vgg16_state(torch.float32)
    wrong_shape["0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(DataError, match="wrong shapes"):
        build_vgg_features("vgg16", str(tmp_path / "shape.pth"))
