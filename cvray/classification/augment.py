"""The lab's image augmentations (d2l "image augmentation"), two ways. (The named train and eval
presets the training recipes use are cvray.classification.transforms'.)

1. `BatchAugment`: batched tensor ops for training. A whole (B, 3, H, W) uint8 batch is augmented
   on its own device (GPU or CPU) in a handful of kernels: randomness is drawn per sample from one
   `torch.Generator`, with no Python loop over samples and no PIL.
2. `lab_transform`: the lab's torchvision v2 presets, for PIL images (the gallery job).

Both follow torchvision's definitions (RandomResizedCrop's sampling, ColorJitter's brightness,
contrast, saturation and hue), so a model trained with one sees the same distribution as with the
other. Plain PyTorch; no Ray. torchvision is imported by the v2 presets only (see
cvray.classification.models: a training worker never needs it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cvray.classification.config import validate_names
from cvray.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torchvision.transforms import v2

# The lab's settings (d2l image-augmentation section).
CROP_SCALE = (0.1, 1.0)
"""RandomResizedCrop: crop area as a fraction of the image area."""
CROP_RATIO = (0.5, 2.0)
"""RandomResizedCrop: crop aspect ratio (width / height)."""
JITTER = 0.5
"""ColorJitter strength: brightness/contrast/saturation factors in [0.5, 1.5], hue shift in [-0.5, 0.5]."""
LAB_CROP_SIZE = (200, 200)
"""The lab's RandomResizedCrop output (height, width) for its 500x400 cat photo."""

# ITU-R 601-2 luma, the weights torchvision's rgb_to_grayscale uses.
_LUMA = (0.2989, 0.587, 0.114)
_CROP_TRIES = 10  # torchvision's number of (area, ratio) draws before the central-crop fallback


class BatchAugment:
    """The lab's augmentations on whole batches, on the batch's device.

    `names` are applied in order (e.g. ("flip", "crop")); "all" is the lab's composition
    flip -> color -> crop. `out_size` (height, width) is the crop's output size; None keeps the
    input's resolution. Without a crop, a different `out_size` is reached by a bilinear resize.
    """

    def __init__(self, names: Sequence[str], out_size: tuple[int, int] | None = None):
        self.names = validate_names(names)
        if out_size is not None:
            out_size = tuple(out_size)
            if len(out_size) != 2 or not all(isinstance(s, int) and s > 0 for s in out_size):
                raise ConfigError(f"out_size must be two positive integers (height, width), got {out_size}")
        self.out_size = out_size
        self._steps = [step for name in self.names for step in _EXPANSION.get(name, (name,))]

    def __repr__(self) -> str:
        return f"BatchAugment(names={self.names}, out_size={self.out_size})"

    def __call__(self, images, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) uint8 (or float in [0, 1]) -> float32 (B, 3, H', W') in [0, 1], same device.

        All random numbers come from `generator` (it must live on the images' device; None: torch's
        default generator), so a seeded generator reproduces a batch exactly. A list of (3, H, W)
        images of one size is stacked first; images of mixed sizes take cvray.classification.
        transforms' crop presets.
        """
        images = stack_one_size(images, "BatchAugment")
        _check_images(images)
        out_size = self.out_size or tuple(images.shape[-2:])
        x = images
        for step in self._steps:
            if step in ("flip", "vflip"):
                # Flips are pure indexing: cheaper on uint8, before the float conversion.
                x = random_flip(x, dim=-1 if step == "flip" else -2, generator=generator)
                continue
            x = to_float(x)
            if step == "crop":
                x = random_resized_crop(x, out_size, generator=generator)
            elif step == "brightness":
                x = adjust_brightness(x, _uniform(x, 1 - JITTER, 1 + JITTER, generator))
            elif step == "hue":
                x = adjust_hue(x, _uniform(x, -JITTER, JITTER, generator))
            elif step == "color":
                x = color_jitter(x, generator=generator)
        x = to_float(x)
        if tuple(x.shape[-2:]) != out_size:
            x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        return x


# "all" is the lab's Compose([RandomHorizontalFlip(), color_aug, shape_aug]); "none" does nothing.
_EXPANSION = {"all": ("flip", "color", "crop"), "none": ()}


def stack_one_size(images, what: str) -> torch.Tensor:
    """A list of (3, H, W) images of one size as one (B, 3, H, W) tensor; a tensor as it is."""
    if not isinstance(images, list):
        return images
    if len({tuple(im.shape) for im in images}) > 1:
        raise DataError(f"{what} needs images of one size; use the 'crop' transform preset for mixed sizes")
    return torch.stack(images)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"augmentations need images of shape (B, 3, H, W), got {shape}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise DataError(f"augmentations need uint8 or float images, got {images.dtype}")


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 / 255; float input is taken to be in [0, 1] already (cast to float32)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


def _uniform(x: torch.Tensor, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    """One U[low, high) draw per sample: shape (B,), on x's device."""
    u = torch.rand(x.shape[0], generator=generator, device=x.device)
    return u.mul_(high - low).add_(low)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1), to broadcast against (B, C, H, W)."""
    return values.view(-1, 1, 1, 1)


# ---------------------------------------------------------------- flips


def random_flip(x: torch.Tensor, dim: int, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each sample along `dim` (-1: horizontal, -2: vertical) with probability p.

    Picks each sample from [originals; flipped copies] with index_select: no device sync on CUDA
    (unlike boolean indexing) and ~6x faster on CPU than torch.where with a broadcast mask.
    """
    batch = x.shape[0]
    flip = torch.rand(batch, generator=generator, device=x.device) < p
    pick = torch.arange(batch, device=x.device) + flip.long() * batch
    return torch.cat((x, x.flip(dim))).index_select(0, pick)


# ---------------------------------------------------------------- random resized crop


def sample_crop_boxes(
    batch: int,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """torchvision's RandomResizedCrop box sampling, for a whole batch at once.

    Per sample: up to 10 draws of (area fraction ~ U[scale], log aspect ~ U[log ratio]); the first
    draw whose box fits is used, at a uniform position; if none fits, torchvision's central-crop
    fallback. height/width: one size for the batch, or (B,) tensors, one per image (images of
    different sizes padded into one batch). Returns int64 (B, 4) boxes as (top, left, h, w) in pixels.
    """
    H = torch.as_tensor(height, device=device).to(torch.int64).expand(batch)  # (B,)
    W = torch.as_tensor(width, device=device).to(torch.int64).expand(batch)
    area = (H * W).to(torch.float32)[:, None]
    u = torch.rand(batch, _CROP_TRIES, 2, generator=generator, device=device)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect)).long()  # (B, tries)
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting try
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    fallback_h, fallback_w = _central_crop_size(H, W, ratio)
    any_fit = fits.any(dim=1)
    h = torch.where(any_fit, h, fallback_h)
    w = torch.where(any_fit, w, fallback_w)
    # torch.randint(0, H - h + 1) per sample == floor(U * (H - h + 1)); the fallback is centred.
    pos = torch.rand(batch, 2, generator=generator, device=device)
    top = torch.minimum(torch.floor(pos[:, 0] * (H - h + 1)).long(), H - h)
    left = torch.minimum(torch.floor(pos[:, 1] * (W - w + 1)).long(), W - w)
    top = torch.where(any_fit, top, (H - h) // 2)
    left = torch.where(any_fit, left, (W - w) // 2)
    return torch.stack((top, left, h, w), dim=1)


def _central_crop_size(H: torch.Tensor, W: torch.Tensor, ratio: tuple[float, float]):
    """torchvision's fallback crop (h, w) per image: the whole image, cut to the ratio range."""
    in_ratio = W.double() / H.double()
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    h = torch.where(narrow, torch.round(W.double() / min(ratio)).long(), H)
    w = torch.where(wide, torch.round(H.double() * max(ratio)).long(), W)
    return h, w


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Crop box b of sample b and resize it to out_size, bilinearly, in one grid_sample.

    x: float (B, C, H, W); boxes: (B, 4) (top, left, h, w). Sampling points follow
    F.interpolate(bilinear, align_corners=False) on the cropped region, edge pixels repeated, so
    it equals torchvision's resized_crop with antialias=False (the same when enlarging, which is
    the usual case: a crop of a 32x32 image back to 32x32).
    """
    batch, _, height, width = x.shape
    out_h, out_w = out_size
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    top, left, box_h, box_w = boxes.unbind(dim=1)
    ys = _source_coords(top, box_h, out_h)  # (B, out_h), pixel-centre units of the source
    xs = _source_coords(left, box_w, out_w)  # (B, out_w)
    # grid_sample(align_corners=False) reads normalised coordinates: pixel k's centre is (2k+1)/n - 1.
    gy = ((2 * ys + 1) / height - 1).view(batch, out_h, 1).expand(batch, out_h, out_w)
    gx = ((2 * xs + 1) / width - 1).view(batch, 1, out_w).expand(batch, out_h, out_w)
    grid = torch.stack((gx, gy), dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0)


def _source_coords(start: torch.Tensor, length: torch.Tensor, out_len: int) -> torch.Tensor:
    """Where output pixel k of a resize of [start, start + length) reads: interpolate's half-pixel rule."""
    k = torch.arange(out_len, device=start.device, dtype=torch.float32) + 0.5
    coords = start[:, None] + k[None, :] * (length / out_len)[:, None] - 0.5
    return torch.minimum(torch.maximum(coords, start[:, None]), (start + length - 1)[:, None])


def random_resized_crop(
    x: torch.Tensor,
    out_size: tuple[int, int],
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The lab's RandomResizedCrop, a different box per sample; float (B, C, H, W) -> (B, C, *out_size)."""
    boxes = sample_crop_boxes(x.shape[0], x.shape[-2], x.shape[-1], scale, ratio, generator, x.device)
    return resized_crop(x, boxes, out_size)


# ---------------------------------------------------------------- colour (torchvision's ColorJitter)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) -> (B, 1, H, W) luma, torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1]; factor (B,) per sample."""
    return torch.lerp(other, x, _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: x * factor, clamped."""
    return (x * _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level (one value per image)."""
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's grayscale version (per pixel)."""
    return _blend(x, grayscale(x), factor)


def _hue_sixths(r: torch.Tensor, g: torch.Tensor, b: torch.Tensor):
    """Per pixel: (hue in sixths of a turn, in [-1, 5), max channel, max - min).

    Grey pixels (max == min) get hue 0 (their numerator is 0). Masks enter as multiplications and
    max/min as elementwise chains: torch.where and reductions over dim 1 are several times slower
    on CPU, and the result is the same.
    """
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    red_max = maxc == r
    green_max = (maxc == g) & ~red_max
    blue_max = ~(red_max | green_max)
    numerator = (g - b) * red_max + (b - r + 2 * delta) * green_max + (r - g + 4 * delta) * blue_max
    return numerator / delta.clamp_min(1e-12), maxc, delta


def _rgb_from_hue(h6: torch.Tensor, maxc: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Inverse of _hue_sixths: channel n = max - delta * clamp(min(k, 4 - k), 0, 1), k = (n + h6) mod 6.

    The closed form of HSV -> RGB (v = max, s * v = delta) avoids the sector gather; n = 5, 3, 1
    give red, green, blue. (B, H, W) inputs -> (B, 3, H, W) in [0, 1].
    """
    n = torch.arange(5.0, 0.0, -2.0, device=h6.device).view(1, 3, 1, 1)  # 5, 3, 1 made on the device: no copy
    k = n + h6.unsqueeze(1)
    k = k - 6.0 * torch.floor(k * (1.0 / 6.0))  # mod 6; torch.remainder is ~3x slower on CPU
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (maxc.unsqueeze(1) - delta.unsqueeze(1) * ramp).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `shift` (B,) turns (in [-0.5, 0.5]) through HSV; torchvision's adjust_hue."""
    h6, maxc, delta = _hue_sixths(*x.unbind(dim=1))
    return _rgb_from_hue(h6 + 6.0 * shift.view(-1, 1, 1), maxc, delta)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """float RGB (B, 3, H, W) in [0, 1] -> HSV (B, 3, H, W), hue in [0, 1) turns (torchvision's)."""
    h6, maxc, delta = _hue_sixths(*x.unbind(dim=1))
    s = delta / maxc.clamp_min(1e-12)  # delta is 0 where maxc is
    return torch.stack((torch.remainder(h6 / 6.0, 1.0), s, maxc), dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV (B, 3, H, W), hue in turns -> RGB (B, 3, H, W) in [0, 1]."""
    h, s, v = hsv.unbind(dim=1)
    return _rgb_from_hue(6.0 * h, v, s * v)


_JITTER_OPS = (
    (adjust_brightness, 1 - JITTER, 1 + JITTER),
    (adjust_contrast, 1 - JITTER, 1 + JITTER),
    (adjust_saturation, 1 - JITTER, 1 + JITTER),
    (adjust_hue, -JITTER, JITTER),
)


def color_jitter(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5) on a float batch.

    Factors are drawn per sample. torchvision applies the four in a random order per call; here the
    order is drawn once per batch, on the host (see _jitter_order), so the GPU is never waited for.
    """
    factors = [_uniform(x, low, high, generator) for _, low, high in _JITTER_OPS]
    for index in _jitter_order(generator):
        x = _JITTER_OPS[index][0](x, factors[index])
    return x


def _jitter_order(generator: torch.Generator | None) -> list[int]:
    """A permutation of range(4) chosen by `generator` without a device sync (see host_generator):
    the order decides which kernels to launch, so it must be known on the host."""
    return torch.randperm(4, generator=host_generator(generator)).tolist()


def host_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """A CPU generator for host-side draws (kernel choices, crop boxes) that `generator` decides.

    Reading random numbers back from a CUDA tensor would stall until the GPU finished all queued
    work (the previous training step). A CUDA generator's state is (seed, offset) kept on the host,
    so it seeds a host generator: reproducible for a seeded generator, no sync. The CUDA generator
    is then advanced by one queued draw, so the next call gets a new seed. CPU generators (and
    None, torch's default CPU generator) are host-side already and returned as they are.
    """
    if generator is None or generator.device.type == "cpu":
        return generator
    state = generator.get_state().numpy().tobytes()  # host copy of (seed, offset): no device work
    torch.empty(1, device=generator.device).uniform_(generator=generator)  # queued, not waited for
    seed = int.from_bytes(hashlib.blake2b(state, digest_size=8).digest(), "little")
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- torchvision presets (PIL)


def lab_transform(name: str, crop_size: tuple[int, int] = LAB_CROP_SIZE) -> v2.Transform:
    """The lab's torchvision v2 transform for one preset (PIL images or tensors in, same type out)."""
    from torchvision.transforms import v2

    (name,) = validate_names((name,))
    color = v2.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER, hue=JITTER)
    crop = v2.RandomResizedCrop(crop_size, scale=CROP_SCALE, ratio=CROP_RATIO)
    presets = {
        "none": lambda: v2.Identity(),
        "flip": lambda: v2.RandomHorizontalFlip(),
        "vflip": lambda: v2.RandomVerticalFlip(),
        "crop": lambda: crop,
        "brightness": lambda: v2.ColorJitter(brightness=JITTER),
        "hue": lambda: v2.ColorJitter(hue=JITTER),
        "color": lambda: color,
        "all": lambda: v2.Compose([v2.RandomHorizontalFlip(), color, crop]),
    }
    return presets[name]()


def lab_pipeline(names: Sequence[str], crop_size: tuple[int, int] = LAB_CROP_SIZE) -> v2.Transform:
    """Several lab presets composed in order, as torchvision v2 (the reference for BatchAugment)."""
    from torchvision.transforms import v2

    return v2.Compose([lab_transform(name, crop_size) for name in validate_names(names)])
