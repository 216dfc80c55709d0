"""VGG feature extractors with taps by layer name (conv1_1 ... relu5_4, pool1 ... pool5).

Plain PyTorch; no Ray. `build_vgg_features` returns torchvision's `vgg16().features` or
`vgg19().features` (an nn.Sequential, eval mode, frozen) with ImageNet, random or local weights;
`VGGTaps` runs it up to the deepest requested layer and returns the named activations.

Names follow the usual convention: block b (1-5, separated by max-pools), convolution k within
the block: conv{b}_{k}, the ReLU after it relu{b}_{k}, the pool closing the block pool{b}.
For VGG-19, features index 0 = conv1_1, 5 = conv2_1, 10 = conv3_1, 19 = conv4_1, 25 = conv4_4,
28 = conv5_1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cvray.errors import ConfigError, DataError, first_line
from cvray.state_dicts import read_state_dict

ARCHS = ("vgg16", "vgg19")
CONVS_PER_BLOCK = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_CFG = {"vgg16": "D", "vgg19": "E"}  # torchvision.models.vgg.cfgs keys
_BUILDERS = {"vgg16": torchvision.models.vgg16, "vgg19": torchvision.models.vgg19}
_IMAGENET_WEIGHTS = {
    "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
    "vgg19": torchvision.models.VGG19_Weights.IMAGENET1K_V1,
}


def arch_layer_names(arch: str) -> list[str]:
    """Names of `features[i]` for i = 0, 1, ... of a torchvision VGG (no model is built)."""
    _check_arch(arch)
    names = []
    for block, convs in enumerate(CONVS_PER_BLOCK[arch], start=1):
        for k in range(1, convs + 1):
            names += [f"conv{block}_{k}", f"relu{block}_{k}"]
        names.append(f"pool{block}")
    return names


def layer_names(features: nn.Sequential) -> list[str]:
    """Names of the layers of any VGG-like Sequential (conv/ReLU/max-pool), in order.

    Works for truncated or narrow VGGs too (tests build tiny ones), so taps never depend on
    module indices.
    """
    names, block, conv, last_conv = [], 1, 0, None
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            conv += 1
            last_conv = f"{block}_{conv}"
            names.append(f"conv{last_conv}")
        elif isinstance(layer, nn.ReLU):
            if last_conv is None:
                raise ConfigError("not a VGG feature stack: a ReLU comes before any convolution")
            names.append(f"relu{last_conv}")
        elif isinstance(layer, nn.MaxPool2d):
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            raise ConfigError(f"not a VGG feature stack: unexpected layer {type(layer).__name__}")
    return names


def check_layer_names(requested: Sequence[str], valid: Sequence[str], what: str = "layer") -> None:
    """Raise ConfigError naming the unknown layers and listing the valid ones."""
    unknown = [name for name in requested if name not in valid]
    if unknown:
        taps = [n for n in valid if not n.startswith("pool")]
        raise ConfigError(
            f"unknown {what} {', '.join(unknown)}; valid: {', '.join(taps)} (and pool1..pool5)"
        )


def default_content_layers(arch: str) -> tuple[str, ...]:
    """The lab's content layer: the last convolution of block 4, read after its in-place ReLU.

    The lab captures VGG-19 features[25] = conv4_4, which the next (in-place) ReLU overwrites,
    so what it uses is relu4_4. VGG-16's block 4 ends with conv4_3.
    """
    _check_arch(arch)
    return (f"relu4_{CONVS_PER_BLOCK[arch][3]}",)


def build_vgg_features(arch: str = "vgg19", weights: str | None = None) -> nn.Sequential:
    """torchvision VGG `features` in eval mode with requires_grad False.

    weights: None -> torchvision's IMAGENET1K_V1 through the weights enum (downloaded into
    torchvision's cache on first use; DataError when that fails); "random" -> torchvision's
    random init (seed torch first; for tests and timing); otherwise a local path or object-store
    URI of a state dict (see `load_features_state_dict`).
    """
    _check_arch(arch)
    if weights is None:
        enum = _IMAGENET_WEIGHTS[arch]
        try:
            features = _BUILDERS[arch](weights=enum).features
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            raise DataError(
                f"cannot load {arch} {enum} ({first_line(exc)}); offline? pass --weights PATH "
                f"to a local state dict"
            ) from None
    elif weights == "random":
        features = _make_features(arch)
        for layer in features:  # torchvision's VGG init, without building the classifier
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
    else:
        with torch.device("meta"):  # no init: every tensor comes from the file
            features = _make_features(arch)
        features.load_state_dict(load_features_state_dict(weights, arch, features), assign=True)
    features.eval()
    features.requires_grad_(False)
    return features


def _make_features(arch: str) -> nn.Sequential:
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs[_CFG[arch]])


def load_features_state_dict(path: str, arch: str, features: nn.Sequential) -> dict[str, torch.Tensor]:
    """Read a VGG state dict (fp16 or fp32; keys `0.weight` or a full model's `features.0.weight`).

    Returns fp32 tensors keyed like `features` itself; DataError for a missing or corrupt file,
    or keys/shapes that do not fit `arch` (with a hint at the arch the file seems to be).
    """
    raw = read_state_dict(path)
    state = {}
    for key, value in raw.items():
        if key.startswith("classifier."):
            continue  # a full torchvision model: only the convolutions are needed
        state[key.removeprefix("features.")] = value.float()
    expected = features.state_dict()
    missing = sorted(set(expected) - set(state), key=_key_order)
    unexpected = sorted(set(state) - set(expected), key=_key_order)
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        convs = len([k for k in state if k.endswith(".weight")])
        guess = {13: "vgg16", 16: "vgg19"}.get(convs)
        hint = f"; it looks like {guess}: try --arch {guess}" if guess and guess != arch else ""
        detail = (
            f"missing {missing[:4]}" if missing else
            f"unexpected {unexpected[:4]}" if unexpected else f"wrong shapes at {wrong_shape[:4]}"
        )
        raise DataError(f"{path}: weights do not fit {arch} features ({detail}){hint}")
    return state


class VGGTaps(nn.Module):
    """Named activations of a VGG feature stack.

    forward(x) takes ImageNet-normalised images (B, 3, H, W) and returns {name: activation} for
    the requested names, running only up to the deepest of them. ReLUs are applied out of
    place here, so a conv tap is the convolution's output (unlike the lab, whose in-place
    ReLUs overwrite the conv outputs it captured: ask for relu names to get that).
    """

    def __init__(self, features: nn.Sequential, names: Sequence[str]):
        super().__init__()
        all_names = layer_names(features)
        check_layer_names(names, all_names)
        if not names:
            raise ConfigError("no layers requested")
        depth = max(all_names.index(n) for n in names) + 1
        self.layers = nn.Sequential(*list(features)[:depth])
        self.layer_names = all_names[:depth]
        self.names = tuple(dict.fromkeys(names))  # requested, in order, without repeats
        pools = sum(isinstance(layer, nn.MaxPool2d) for layer in self.layers)
        self.min_side = 2**pools  # smallest input height/width that leaves every tap >= 1 px

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted, taps = set(self.names), {}
        for name, layer in zip(self.layer_names, self.layers, strict=True):
            x = F.relu(x) if isinstance(layer, nn.ReLU) else layer(x)
            if name in wanted:
                taps[name] = x
        return taps


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def _key_order(key: str):
    match = re.match(r"(\d+)\.", key)
    return (int(match.group(1)) if match else 10**6, key)
