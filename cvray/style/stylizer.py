"""The batched style-transfer optimiser (d2l section 14.12). Plain PyTorch; no Ray.

The optimised variable is the ImageNet-normalised image, as in the lab (Adam, StepLR, TV on the
normalised image, clamp to [0, 1] only at the end).

Batching: B content images of one shape are optimised together. Every loss is computed per
image (a mean over that image's own elements) and the objective is the sum over images, so
each image's gradient is its solo gradient; Adam and StepLR act element by element, so each
result equals optimising that image alone, up to float rounding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from cvray.errors import ConfigError
from cvray.images import load_image, shrink_to_long_side, to_tensor
from cvray.style.config import StyleConfig
from cvray.style.losses import (
    LOSS_NAMES,
    content_loss,
    denormalize,
    gram,
    keep_original_colors,
    normalize,
    style_loss,
    tv_loss,
)
from cvray.style.presets import validate_style_config
from cvray.style.vgg import VGGTaps, build_vgg_features, default_content_layers


@dataclass
class _Targets:
    """What one batch is optimised towards."""

    content: dict[str, torch.Tensor]  # layer -> (B, C, H, W) fp32
    grams: dict[str, torch.Tensor]  # layer -> (C, C) fp32, blended over style images
    scales: dict[str, torch.Tensor | float]  # divisor of each layer's loss: 1, or (B,) / scalar
    style_weights: torch.Tensor  # (B,)


@dataclass
class StyleResult:
    images: torch.Tensor
    """(B, 3, H, W) float32 in [0, 1], on the CPU."""
    losses: dict[str, np.ndarray]
    """"content", "style", "tv", "total" -> (B, iterations) float64: each image's weighted loss
    terms (total = their sum) at every iteration, before that iteration's step."""
    seconds: float
    """Wall time of the optimisation (targets, loop and result), device synchronised."""


class Stylizer:
    """Stylise batches of content images with fixed style image(s) and settings.

    Builds (or takes) the VGG once; style Grams are computed once per output size and cached.
    On CUDA with precision "bf16", the VGG runs under bf16 autocast in channels_last, while the
    image, its Adam state and the losses stay fp32 (Gram matmuls in TF32).
    """

    def __init__(
        self,
        config: StyleConfig,
        style_images: Sequence[Image.Image],
        device: str | torch.device = "cpu",
        features: nn.Module | None = None,
    ):
        validate_style_config(config, n_styles=len(style_images))
        self.config = config
        self.device = torch.device(device)
        self.fast = self.device.type == "cuda" and config.precision == "bf16"
        self.content_layers = tuple(config.content_layers or default_content_layers(config.arch))
        self.style_layers = tuple(config.style_layers)
        self.layer_weights = tuple(config.style_layer_weights or (1.0,) * len(self.style_layers))
        blend = config.style_blend or (1.0,) * len(style_images)
        self.blend = tuple(w / sum(blend) for w in blend)
        if features is None:
            features = build_vgg_features(config.arch, config.weights)
        self.taps = VGGTaps(features, self.content_layers + self.style_layers).to(self.device)
        if self.fast:
            self.taps = self.taps.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            # one shape per batch, hundreds of steps: cuDNN's autotuner pays for itself
            # (a process-wide flag; it changes speed, not results beyond float rounding)
            torch.backends.cudnn.benchmark = True
        self.style_images = [image.convert("RGB") for image in style_images]
        self._grams: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    # ---- sizes and inputs

    def prepare_content(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> (3, H, W) float [0, 1] at config.output_size (Lanczos)."""
        h, w = self.config.output_size(*image.size)
        if (w, h) != image.size:
            image = image.convert("RGB").resize((w, h), Image.LANCZOS, reducing_gap=3.0)
        return to_tensor(image)

    @torch.no_grad()
    def style_grams(self, height: int, width: int) -> dict[str, torch.Tensor]:
        """Blended target Grams {style layer: (C, C) fp32} for an output of height x width.

        Each style image is resized so its long side is style_scale x the output's long side
        (aspect kept); its Grams are blended with the style_blend weights.
        """
        key = (height, width)
        if key not in self._grams:
            long_side = max(1, round(self.config.style_scale * max(height, width)))
            blended = {}
            for weight, image in zip(self.blend, self.style_images, strict=True):
                x = to_tensor(shrink_to_long_side(image, long_side)).unsqueeze(0).to(self.device)
                self._check_size(*x.shape[2:], "style image")
                feats = self._features(normalize(x))
                for name in self.style_layers:
                    blended[name] = blended.get(name, 0) + weight * gram(feats[name])[0]
            self._grams[key] = blended
        return self._grams[key]

    # ---- optimisation

    def stylize(
        self,
        contents: torch.Tensor,
        *,
        callback: Callable[[int, torch.Tensor], None] | None = None,
        callback_every: int = 1,
        seed: int | Sequence[int] | None = None,
        style_weights: Sequence[float] | None = None,
    ) -> StyleResult:
        """Optimise B content images (B, 3, H, W) in [0, 1], all of one shape, on any device.

        callback(iteration, images) is called after every `callback_every`-th step with the
        current (B, 3, H, W) [0, 1] images on the device. seed (noise init only): an int gives
        image i the seed seed + i, a sequence one seed per image; None: config.seed.
        style_weights: one style weight per image instead of config.style_weight (a style-weight
        sweep in one batch).
        """
        prev_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32 or self.fast  # Gram matmuls in fp32 storage
        try:
            return self._optimise(contents, callback, callback_every, seed, style_weights)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev_tf32

    def evaluate(
        self, images: torch.Tensor, contents: torch.Tensor, style_weights: Sequence[float] | None = None
    ) -> dict[str, torch.Tensor]:
        """The weighted loss terms {"content", "style", "tv", "total": (B,)} of images (B, 3, H, W)
        in [0, 1] against their contents, exactly as stylize() computes them (differentiable)."""
        targets = self._targets(contents.to(self.device, torch.float32), style_weights)
        terms = self._loss_terms(normalize(images.to(self.device)), targets)
        return dict(zip(LOSS_NAMES, terms, strict=True))

    def _optimise(self, contents, callback, callback_every, seed, style_weights) -> StyleResult:
        cfg = self.config
        self._sync()
        start = time.perf_counter()
        contents = contents.to(self.device, torch.float32)
        targets = self._targets(contents, style_weights)
        x = self._init(contents, seed).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, cfg.lr_gamma)
        history = []
        for iteration in range(1, cfg.iterations + 1):
            optimizer.zero_grad(set_to_none=True)
            terms = self._loss_terms(x, targets)  # (4, B)
            terms[3].sum().backward()  # sum over images: each image gets its solo gradient
            optimizer.step()
            scheduler.step()
            history.append(terms.detach())
            if callback is not None and iteration % callback_every == 0:
                callback(iteration, self._finish(x, contents))
        images = self._finish(x, contents).cpu()
        losses = torch.stack(history, dim=2) if history else torch.zeros(4, len(contents), 0)
        losses = losses.double().cpu().numpy()  # (4, B, iterations)
        self._sync()
        return StyleResult(
            images=images,
            losses={name: losses[i] for i, name in enumerate(LOSS_NAMES)},
            seconds=time.perf_counter() - start,
        )

    @torch.no_grad()
    def _targets(self, contents: torch.Tensor, style_weights) -> _Targets:
        if contents.ndim != 4 or contents.shape[1] != 3:
            raise ConfigError(f"contents must be (B, 3, H, W), got {tuple(contents.shape)}")
        self._check_size(*contents.shape[2:], "content")
        b = contents.shape[0]
        weights = [self.config.style_weight] * b if style_weights is None else list(style_weights)
        if len(weights) != b:
            raise ConfigError(f"got {len(weights)} style weights for {b} images")
        feats = self._features(normalize(contents))
        content = {n: feats[n].float() for n in self.content_layers}
        grams = self.style_grams(*contents.shape[2:])
        if self.config.normalized_losses:  # per image for content, per layer for style
            tiny = torch.finfo(torch.float32).tiny
            scales = {n: t.square().mean(dim=(1, 2, 3)).clamp_min(tiny) for n, t in content.items()}
            scales.update({"gram:" + n: g.square().mean().clamp_min(tiny) for n, g in grams.items()})
        else:
            scales = {**{n: 1.0 for n in content}, **{"gram:" + n: 1.0 for n in grams}}
        weights = torch.tensor(weights, dtype=torch.float32, device=self.device)
        return _Targets(content, grams, scales, weights)

    def _loss_terms(self, x: torch.Tensor, targets: _Targets) -> torch.Tensor:
        """Weighted per-image terms (4, B) of the normalised images x: content, style, TV, sum."""
        cfg = self.config
        feats = self._features(x)  # autocast ends here: the losses run in fp32
        content = sum(
            content_loss(feats[n], targets.content[n]) / targets.scales[n]
            for n in self.content_layers
        )
        style = sum(
            w * style_loss(feats[n], targets.grams[n]) / targets.scales["gram:" + n]
            for n, w in zip(self.style_layers, self.layer_weights, strict=True)
        )
        c = cfg.content_weight * content
        s = targets.style_weights * style
        t = cfg.tv_weight * tv_loss(x)
        return torch.stack([c, s, t, c + s + t])

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.fast:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.taps(x.contiguous(memory_format=torch.channels_last))
        return self.taps(x)

    def _init(self, contents: torch.Tensor, seed) -> torch.Tensor:
        """The starting (normalised) image: the content, or uniform noise seeded per image."""
        if self.config.init == "content":
            return normalize(contents).clone()
        b = contents.shape[0]
        base = self.config.seed if seed is None else seed
        seeds = [base + i for i in range(b)] if isinstance(base, int) else list(base)
        if len(seeds) != b:
            raise ConfigError(f"got {len(seeds)} seeds for {b} images")
        noise = [
            torch.rand(contents.shape[1:], generator=torch.Generator().manual_seed(int(s)))
            for s in seeds
        ]
        return normalize(torch.stack(noise).to(contents.device))

    def _finish(self, x: torch.Tensor, contents: torch.Tensor) -> torch.Tensor:
        images = denormalize(x.detach()).clamp(0, 1)
        if self.config.original_colors:
            images = keep_original_colors(images, contents)
        return images

    def _check_size(self, height: int, width: int, what: str) -> None:
        if min(height, width) < self.taps.min_side:
            deepest = self.taps.layer_names[-1]
            raise ConfigError(
                f"{what} {height}x{width} is too small for layer {deepest}: it needs at least "
                f"{self.taps.min_side} px on each side (use a larger --size/--shape or shallower layers)"
            )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def load_style_images(paths: Sequence[str], max_side: int = 4096) -> list[Image.Image]:
    """Decode style images (local paths or URIs); DataError names a missing or corrupt one."""
    return [load_image(path, max_side=max_side) for path in paths]
