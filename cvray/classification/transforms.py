"""Named batch transforms for training and evaluation: what a recipe feeds its model.

Every transform maps uint8 images (B, 3, H, W) on the training device (plus, for images of mixed
sizes, their (B, 2) sizes) to the float model input, with whole-batch tensor ops on that device.

Presets (`TRANSFORM_PRESETS`):
- "cifar": the CIFAR lab's input, unnormalised [0, 1] at the stored 32x32 size; training adds
  the lab's augmentations (cvray.classification.augment.BatchAugment).
- "crop": the fine-tuning lab's. Train: RandomResizedCrop(crop) (torchvision's scale (0.08, 1) and
  ratio (3/4, 4/3)) + random horizontal flip; eval: Resize((R, R)) + CenterCrop(crop) with
  R = round(crop * 256 / 224) (the lab's 256 and 224). Then the weights' normalisation:
  "imagenet" (ImageNet mean/std, for ImageNet weights) or "none" ([0, 1], for CIFAR-trained ones).
Each crop and resize is one bilinear grid_sample per batch (boxes per image, inside its own size);
docs/finetune.md measures how that differs from torchvision's PIL transforms.
"""

from __future__ import annotations

import torch

from cvray.classification.augment import BatchAugment, random_flip, resized_crop, sample_crop_boxes, to_float
from cvray.errors import ConfigError
from cvray.images import IMAGENET_MEAN, IMAGENET_STD

TRANSFORM_PRESETS = ("cifar", "crop")
NORMALIZATIONS = ("imagenet", "none")
RRC_SCALE = (0.08, 1.0)
"""torchvision RandomResizedCrop's default area fraction (the fine-tuning lab's)."""
RRC_RATIO = (3 / 4, 4 / 3)
EVAL_RESIZE_PER_CROP = 256 / 224
"""The lab's Resize((256, 256)) before CenterCrop(224)."""


def to_unit_float(
    images: torch.Tensor, generator: torch.Generator | None = None, sizes: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [0, 1]: the CIFAR lab's evaluation input."""
    return to_float(images)


def normalize(x: torch.Tensor, normalization: str) -> torch.Tensor:
    """float (B, 3, H, W) in [0, 1] -> the network's input for weights of that origin."""
    if normalization == "none":
        return x
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _sizes_or_full(images: torch.Tensor, sizes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if sizes is None:
        b, _, h, w = images.shape
        full = torch.tensor([h, w], device=images.device).expand(b, 2)
        return full[:, 0], full[:, 1]
    sizes = sizes.to(images.device)
    return sizes[:, 0], sizes[:, 1]


class CropTrain:
    """RandomResizedCrop(crop) + RandomHorizontalFlip + normalisation, per image inside its size."""

    def __init__(self, crop_size: int, normalization: str):
        self.crop_size, self.normalization = int(crop_size), _check_normalization(normalization)

    def __call__(self, images, generator=None, sizes=None) -> torch.Tensor:
        heights, widths = _sizes_or_full(images, sizes)
        boxes = sample_crop_boxes(images.shape[0], heights, widths, RRC_SCALE, RRC_RATIO, generator, images.device)
        x = resized_crop(to_float(images), boxes, (self.crop_size, self.crop_size))
        return normalize(random_flip(x, dim=-1, generator=generator), self.normalization)


class CropEval:
    """Resize((R, R)) + CenterCrop(crop) + normalisation, as one crop box per image."""

    def __init__(self, crop_size: int, normalization: str):
        self.crop_size, self.normalization = int(crop_size), _check_normalization(normalization)
        self.resize = round(self.crop_size * EVAL_RESIZE_PER_CROP)

    def boxes(self, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """(B, 4) float boxes (top, left, h, w) in each image's pixels: the centre crop of its
        R x R resize, mapped back (the resize squashes: each axis scales on its own)."""
        margin = round((self.resize - self.crop_size) / 2)  # torchvision's center_crop offset
        sy, sx = heights.double() / self.resize, widths.double() / self.resize
        return torch.stack((margin * sy, margin * sx, self.crop_size * sy, self.crop_size * sx), dim=1)

    def __call__(self, images, generator=None, sizes=None) -> torch.Tensor:
        heights, widths = _sizes_or_full(images, sizes)
        x = resized_crop(to_float(images), self.boxes(heights, widths), (self.crop_size, self.crop_size))
        return normalize(x, self.normalization)


def _check_normalization(normalization: str) -> str:
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
    return normalization


def train_transform(preset: str, *, aug=("flip",), crop_size: int | None = None, normalization: str = "none"):
    """The batch transform a recipe trains with."""
    if preset == "cifar":
        return BatchAugment(aug)
    if preset == "crop":
        return CropTrain(_crop(crop_size), normalization)
    raise ConfigError(f"unknown transform preset {preset!r}; choose one of {', '.join(TRANSFORM_PRESETS)}")


def eval_transform(preset: str, *, crop_size: int | None = None, normalization: str = "none"):
    """The batch transform a recipe evaluates (and predicts) with."""
    if preset == "cifar":
        return to_unit_float
    if preset == "crop":
        return CropEval(_crop(crop_size), normalization)
    raise ConfigError(f"unknown transform preset {preset!r}; choose one of {', '.join(TRANSFORM_PRESETS)}")


def _crop(crop_size: int | None) -> int:
    if not crop_size or crop_size < 1:
        raise ConfigError(f"the crop preset needs a positive crop size, got {crop_size}")
    return int(crop_size)
