"""The style-transfer job configs: one frozen dataclass each, defaults = the d2l lab's numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cvray.config import JsonConfig


@dataclass(frozen=True)
class StyleConfig(JsonConfig):
    """Neural style transfer (d2l section 14.12). Defaults reproduce the lab exactly."""

    preset: str = "lab"
    """Name of the preset the other fields came from (cvray.style.presets.STYLE_PRESETS); a record only."""
    arch: str = "vgg19"
    """Feature network: vgg19 (the lab) or vgg16."""
    weights: str | None = None
    """Local state dict (features-only or full torchvision keys); None: torchvision ImageNet weights."""
    size: int | None = 450
    """Output long side in pixels, aspect kept (the lab's width). Ignored when shape is set."""
    shape: tuple[int, int] | None = None
    """Exact output (height, width), e.g. the lab's (300, 450)."""
    style_scale: float = 1.0
    """Style image size relative to the output's long side."""
    iterations: int = 500
    lr: float = 0.3
    """Adam learning rate."""
    lr_step: int = 50
    """StepLR period in iterations."""
    lr_gamma: float = 0.8
    """StepLR decay factor."""
    content_weight: float = 1.0
    style_weight: float = 1e4
    """The lab's 1e3 times the x10 its `10 * styles_l` list repetition applies."""
    tv_weight: float = 10.0
    content_layers: tuple[str, ...] | None = None
    """None: the lab's layer 25 = conv4_4 as it really captures it (torchvision ReLUs are in
    place): relu4_4 on VGG-19, relu4_3 (the last of block 4) on VGG-16."""
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "conv5_1")
    """What the lab's layers 0, 5, 10, 19, 28 really capture."""
    style_layer_weights: tuple[float, ...] | None = None
    """One weight per style layer, multiplying its Gram loss; None: all 1 (the lab)."""
    normalized_losses: bool = False
    """Divide each layer's content/style loss by its target's mean square (per image), so the
    weights are relative and do not depend on the network's activation scale. False: the lab."""
    style_blend: tuple[float, ...] | None = None
    """Weights of several style images (normalised to sum 1); None: equal."""
    original_colors: bool = False
    """Keep the content's colours: transfer luminance only."""
    init: str = "content"
    """Start image: content or noise."""
    seed: int = 0
    precision: str = "bf16"
    """bf16: bf16 autocast + channels_last on CUDA (CPU runs fp32); fp32 everywhere."""

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(H, W) a width x height content is processed at: `shape` if set, else its long side
        brought down to `size` (aspect kept, never upscaled)."""
        if self.shape is not None:
            return int(self.shape[0]), int(self.shape[1])
        if self.size is None or max(width, height) <= self.size:
            return height, width
        scale = self.size / max(width, height)
        return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass(frozen=True)
class StylizeFolderConfig(JsonConfig):
    """Bulk stylisation of an image folder on Ray Data (docs/bulk.md)."""

    style: StyleConfig = field(default_factory=StyleConfig)
    """Style settings; size is the processing long side (smaller images are not upscaled)."""
    input: str = ""
    """Folder (local path or object-store URI) searched recursively for images."""
    output: str = ""
    """Output folder; must not lie inside the input folder (nor contain it)."""
    style_images: tuple[str, ...] = ()
    """Style image paths or URIs (at least one; several are blended)."""
    num_actors: int | None = None
    """Stylising actors; None: one per GPU, else one per two CPUs (at least 1)."""
    batch_size: int = 4
    """Images of one shape optimised together by an actor."""
    overwrite: bool = False
    """Redo images that are already written."""
    use_gpu: bool | None = None
    """None: one GPU per actor when the cluster has GPUs, else CPU actors."""
    cpus_per_actor: float | None = None
    """CPU actors: torch threads per actor (rounded down, at least 1); None: a fair share of the
    cluster. What an actor reserves from Ray is capped so the read tasks always fit beside."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = dict(data)
        if isinstance(data.get("style"), dict):
            data["style"] = StyleConfig.from_dict(data["style"])
        return super().from_dict(data)
