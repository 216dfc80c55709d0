"""Named style-transfer settings (presets) and the check that a StyleConfig can run."""

from __future__ import annotations

from cvray.errors import ConfigError
from cvray.style.config import StyleConfig

STYLE_PRESETS: dict[str, dict] = {
    # The lab's numbers: StyleConfig's defaults.
    "lab": {},
    # Measured on the shared VGG-16 weights (docs/style.md): normalised losses make the weights
    # relative, so the style weight sets the strength whatever the network's activation scale;
    # a smaller lr keeps the content's shapes; TV 0.1 avoids flat blocks at low style weights.
    "balanced": {
        "normalized_losses": True,
        "style_layers": ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        "content_layers": ("relu4_2",),
        "lr": 0.05,
        "style_weight": 1.0,
        "tv_weight": 0.1,
    },
}


def preset_config(name: str = "lab", **overrides) -> StyleConfig:
    """StyleConfig from a named preset, then `overrides` (any StyleConfig field) on top."""
    if name not in STYLE_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(STYLE_PRESETS)}")
    return StyleConfig(**{**STYLE_PRESETS[name], **overrides, "preset": name})


def validate_style_config(config: StyleConfig, n_styles: int | None = None) -> None:
    """ConfigError for settings that cannot run (layer names are checked by VGGTaps)."""
    if n_styles is not None and n_styles < 1:
        raise ConfigError("at least one style image is needed")
    if config.style_blend is not None:
        if n_styles is not None and len(config.style_blend) != n_styles:
            raise ConfigError(
                f"--style-blend has {len(config.style_blend)} weights for {n_styles} style images"
            )
        if any(w < 0 for w in config.style_blend) or not sum(config.style_blend) > 0:
            raise ConfigError("--style-blend weights must be >= 0 with a positive sum")
    if not config.style_layers:
        raise ConfigError("at least one style layer is needed")
    if config.content_layers is not None and not config.content_layers:
        raise ConfigError("at least one content layer is needed (use --content-weight 0 instead)")
    weights = config.style_layer_weights
    if weights is not None and len(weights) != len(config.style_layers):
        raise ConfigError(
            f"{len(weights)} style layer weights for {len(config.style_layers)} style layers"
        )
    if config.init not in ("content", "noise"):
        raise ConfigError(f"unknown init {config.init!r}; choose content or noise")
    if config.precision not in ("bf16", "fp32"):
        raise ConfigError(f"unknown precision {config.precision!r}; choose bf16 or fp32")
    if config.iterations < 0 or config.lr <= 0 or config.style_scale <= 0:
        raise ConfigError("iterations must be >= 0, lr and style_scale > 0")
    if config.shape is not None and (len(config.shape) != 2 or min(config.shape) < 1):
        raise ConfigError(f"shape must be (height, width) >= 1, got {config.shape}")
