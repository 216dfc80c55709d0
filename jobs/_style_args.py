"""The style-transfer flags every style job shares (stylize, stylize_folder, the sweep).

Flags left out take their value from --preset (default "lab": the d2l lab's numbers), so
`--preset balanced --style-weight 10` changes only the style weight of that preset.
"""

from __future__ import annotations

import argparse

import _common  # noqa: F401 - puts the repository root on sys.path
from cvray.config import PRECISIONS
from cvray.errors import ConfigError
from cvray.style.config import StyleConfig
from cvray.style.presets import STYLE_PRESETS, preset_config, validate_style_config
from cvray.style.vgg import ARCHS, arch_layer_names, check_layer_names, default_content_layers

# flag dest -> StyleConfig field, for flags whose value goes into the config unchanged
_FIELDS = (
    "arch", "weights", "style_scale", "iterations", "lr", "content_weight", "style_weight",
    "tv_weight", "content_layers", "style_layers", "style_layer_weights", "normalized_losses",
    "original_colors", "init", "seed", "precision", "style_blend",
)


def add_style_args(parser: argparse.ArgumentParser, *, style_required: bool = True) -> None:
    """Add the shared style flags. Unset flags keep the preset's value (hence no defaults here)."""
    unset = argparse.SUPPRESS
    g = parser.add_argument_group("style transfer (unset flags take the --preset's value)")
    g.add_argument("--style", action="append", required=style_required, metavar="IMG",
                   help="style image, local path or URI; repeat for several (see --style-blend)")
    g.add_argument("--style-blend", type=_floats, default=unset, metavar="W,W,...",
                   help="weights of the style images' Grams, e.g. 3,7 (normalised; default equal)")
    g.add_argument("--preset", choices=tuple(STYLE_PRESETS), default="lab",
                   help="lab: the d2l lab's settings; balanced: normalised losses, the style "
                        "weight sets the strength (docs/style.md)")
    g.add_argument("--arch", choices=ARCHS, default=unset, help="feature network (lab: vgg19)")
    g.add_argument("--weights", default=unset, metavar="PATH",
                   help="local state dict (features-only or full torchvision keys, fp16/fp32); "
                        "default: torchvision's IMAGENET1K_V1 (downloaded once)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--size", type=_common.positive_int, default=unset, metavar="PX",
                      help="output long side, aspect kept, never upscaled (lab: 450)")
    size.add_argument("--shape", type=_shape, default=unset, metavar="HxW",
                      help="exact output height x width, e.g. the lab's 300x450")
    g.add_argument("--style-scale", type=_common.positive_float, default=unset,
                   help="style image long side relative to the output's (1)")
    g.add_argument("--iterations", type=_common.non_negative_int, default=unset, help="(lab: 500)")
    g.add_argument("--lr", type=_common.positive_float, default=unset,
                   help="Adam learning rate on the normalised image (lab: 0.3)")
    g.add_argument("--content-weight", type=_common.non_negative_float, default=unset, help="(lab: 1)")
    g.add_argument("--style-weight", type=_common.non_negative_float, default=unset,
                   help="(lab: 1e4 = its 1e3 x the 10 its loss sum applies)")
    g.add_argument("--tv-weight", type=_common.non_negative_float, default=unset, help="(lab: 10)")
    g.add_argument("--content-layers", type=_names, default=unset, metavar="L,L",
                   help="e.g. relu4_2 (lab: relu4_4 on vgg19, relu4_3 on vgg16)")
    g.add_argument("--style-layers", type=_names, default=unset, metavar="L,L,...",
                   help="(lab: relu1_1,relu2_1,relu3_1,relu4_1,conv5_1)")
    g.add_argument("--style-layer-weights", type=_floats, default=unset, metavar="W,W,...",
                   help="one weight per style layer (all 1)")
    g.add_argument("--normalized-losses", action=argparse.BooleanOptionalAction, default=unset,
                   help="divide each layer's loss by its target's mean square (lab: off)")
    g.add_argument("--original-colors", action=argparse.BooleanOptionalAction, default=unset,
                   help="luminance-only transfer: keep the content's colours (off)")
    g.add_argument("--init", choices=("content", "noise"), default=unset, help="(lab: content)")
    g.add_argument("--seed", type=int, default=unset, help="noise-init seed (0)")
    g.add_argument("--precision", choices=PRECISIONS, default=unset,
                   help="bf16: bf16 autocast + channels_last on CUDA (CPU runs fp32); fp32 (bf16)")
    g.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="run on CUDA (default: when one is visible)")


def style_config_from_args(args: argparse.Namespace) -> StyleConfig:
    """StyleConfig = the preset, then every flag given. Layer names are checked for the arch."""
    overrides = {name: getattr(args, name) for name in _FIELDS if hasattr(args, name)}
    if hasattr(args, "shape"):
        overrides["shape"] = args.shape
    if hasattr(args, "size"):
        overrides.update(size=args.size, shape=None)
    config = preset_config(args.preset, **overrides)
    valid = arch_layer_names(config.arch)
    check_layer_names(config.style_layers, valid, "style layer")
    check_layer_names(config.content_layers or default_content_layers(config.arch), valid, "content layer")
    validate_style_config(config, n_styles=len(args.style) if args.style else None)
    return config


def resolve_device(args: argparse.Namespace) -> str:
    """"cuda" or "cpu" from --gpu/--no-gpu (default: CUDA when visible)."""
    import torch

    available = torch.cuda.is_available()
    if args.gpu and not available:
        raise ConfigError("--gpu asked but no CUDA device is visible")
    return "cuda" if (available if args.gpu is None else args.gpu) else "cpu"


def _shape(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape must be HxW like 300x450, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"--shape sides must be positive, got {text!r}")
    return height, width


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected layer names like relu1_1,relu2_1")
    return names


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 3,7, got {text!r}") from None
