"""Named batch transforms for training and evaluation: what a recipe feeds its model.

Every transform maps the uint8 images of one batch on the training device (an ImageBatch: a
(B, 3, H, W) tensor, or a list of (3, h, w) images of different sizes) to the float32 model input.

Presets (`TRANSFORM_PRESETS`):
- "cifar": the CIFAR lab's input, unnormalised [0, 1] at the stored 32x32 size; training adds
  the lab's augmentations (cvray.classification.augment.BatchAugment), whole-batch tensor ops.
- "crop": the fine-tuning lab's. Train: RandomResizedCrop(crop) (torchvision's scale (0.08, 1) and
  ratio (3/4, 4/3)) + random horizontal flip; eval: Resize((R, R)) + CenterCrop(crop) with
  R = round(crop * 256 / 224) (the lab's 256 and 224). Then the weights' normalisation:
  "imagenet" (ImageNet mean/std, for ImageNet weights) or "none" ([0, 1], for CIFAR-trained ones).
  Boxes are drawn for the whole batch at once on the host; each image's box is then cut from its
  uint8 pixels (a view) and resized on its own with antialiased bilinear interpolation (uint8 on
  the CPU, like PIL; float on CUDA), so only the (B, 3, crop, crop) result is converted to float.
  docs/finetune.md measures how that differs from torchvision's PIL transforms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cvray.classification.augment import BatchAugment, host_generator, sample_crop_boxes, stack_one_size, to_float
from cvray.errors import ConfigError
from cvray.images import IMAGENET_MEAN, IMAGENET_STD

TRANSFORM_PRESETS = ("cifar", "crop")
NORMALIZATIONS = ("imagenet", "none")
RRC_SCALE = (0.08, 1.0)
"""torchvision RandomResizedCrop's default area fraction (the fine-tuning lab's)."""
RRC_RATIO = (3 / 4, 4 / 3)
EVAL_RESIZE_PER_CROP = 256 / 224
"""The lab's Resize((256, 256)) before CenterCrop(224)."""


def to_unit_float(images, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) (or a list of (3, H, W) of one size) -> float32 in [0, 1]: the CIFAR
    lab's evaluation input."""
    return to_float(stack_one_size(images, "the 'cifar' preset"))


def normalize_(x: torch.Tensor, normalization: str) -> torch.Tensor:
    """float (B, 3, H, W) in [0, 1] -> the network's input for weights of that origin, in place."""
    if normalization == "none":
        return x
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, h, w) -> (3, *size), bilinear with antialiasing (torchvision's resize with
    antialias=True). uint8 out on the CPU (torch's vectorised uint8 kernel, rounded like PIL);
    float32 in [0, 255] on CUDA, which has no uint8 resize."""
    x = image.unsqueeze(0)
    if x.device.type != "cpu":
        x = x.float()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _as_list(images) -> list[torch.Tensor]:
    return list(images.unbind(0)) if isinstance(images, torch.Tensor) else list(images)


def _finish(resized: list[torch.Tensor], normalization: str) -> torch.Tensor:
    """Per-image resize results -> one float32 (B, 3, C, C) batch in [0, 1], normalised."""
    x = torch.stack(resized)
    x = to_float(x) if x.dtype == torch.uint8 else x.div_(255.0).clamp_(0.0, 1.0)
    return normalize_(x, normalization)


class CropTrain:
    """RandomResizedCrop(crop) + RandomHorizontalFlip + normalisation, per image inside its own size."""

    def __init__(self, crop_size: int, normalization: str):
        self.crop_size, self.normalization = int(crop_size), _check_normalization(normalization)

    def __call__(self, images, generator: torch.Generator | None = None) -> torch.Tensor:
        images = _as_list(images)
        host = host_generator(generator)  # boxes and flips decide slicing: drawn on the host
        heights = torch.tensor([im.shape[-2] for im in images])
        widths = torch.tensor([im.shape[-1] for im in images])
        boxes = sample_crop_boxes(len(images), heights, widths, RRC_SCALE, RRC_RATIO, host, "cpu").tolist()
        flips = (torch.rand(len(images), generator=host) < 0.5).tolist()
        size = (self.crop_size, self.crop_size)
        resized = []
        for image, (top, left, h, w), flip in zip(images, boxes, flips, strict=True):
            out = resize(image[:, top:top + h, left:left + w], size)
            resized.append(out.flip(-1) if flip else out)
        return _finish(resized, self.normalization)


class CropEval:
    """Resize((R, R)) + CenterCrop(crop) + normalisation, in that order (the lab's), per image."""

    def __init__(self, crop_size: int, normalization: str):
        self.crop_size, self.normalization = int(crop_size), _check_normalization(normalization)
        self.resize = round(self.crop_size * EVAL_RESIZE_PER_CROP)
        self.margin = round((self.resize - self.crop_size) / 2)  # torchvision's center_crop offset

    def __call__(self, images, generator: torch.Generator | None = None) -> torch.Tensor:
        m, c = self.margin, self.crop_size
        resized = [resize(image, (self.resize, self.resize))[:, m:m + c, m:m + c] for image in _as_list(images)]
        return _finish(resized, self.normalization)


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
