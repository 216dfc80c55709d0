"""Building blocks of a style-transfer hyperparameter sweep, without Ray (cvray.on_ray runs the trials).

A trial is one stylisation with swept weights (and maybe lr and layers). Trials only compare if
each is measured the same way, so `unweighted_losses` scores every result with a fixed loss meter
(the lab's taps, all weights 1, fp32) whatever the trial optimised. The rest is pure: the share of
a GPU a trial asks for, the labelled contact sheet and the content-vs-style Pareto plot.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from cvray.errors import ConfigError
from cvray.grids import comparison_picture
from cvray.plots import figure_png, new_figure
from cvray.style.config import StyleConfig
from cvray.style.presets import preset_config
from cvray.style.stylizer import Stylizer
from cvray.style.vgg import arch_layer_names


class StyleLosses(TypedDict):
    """One image's loss terms without weights, on the lab's taps (the lab's definitions: per-layer
    MSEs summed over layers, TV on the ImageNet-normalised image)."""

    content_loss: float
    style_loss: float
    tv_loss: float


# ---------------------------------------------------------------- measuring a trial's result


def meter_config(trial: StyleConfig) -> StyleConfig:
    """The trial's settings with what a sweep may vary fixed: the lab's content and style layers,
    layer weights 1, loss weights 1, the lab's unnormalised losses, fp32 (bf16 would add noise that
    differs between trials). Kept from the trial: arch, weights and the style target (scale, blend)."""
    lab = preset_config("lab")
    return dataclasses.replace(
        trial, content_layers=lab.content_layers, style_layers=lab.style_layers,
        style_layer_weights=None, content_weight=1.0, style_weight=1.0, tv_weight=1.0,
        normalized_losses=False, precision="fp32",
    )


def loss_meter(
    trial: StyleConfig, style_images: Sequence[Image.Image], *,
    features: nn.Sequential | None = None, device: str | torch.device = "cpu",
) -> Stylizer:
    """A Stylizer used only through evaluate(): the trial's style images, meter_config's settings.

    Pass the trial's full VGG `features` to build it once; the meter needs them down to conv5_1.
    Build one meter per trial (or per sweep): it caches the style Grams per output size.
    """
    return Stylizer(meter_config(trial), style_images, device=device, features=features)


@torch.no_grad()
def unweighted_losses(meter: Stylizer, images: torch.Tensor, contents: torch.Tensor) -> list[StyleLosses]:
    """Loss terms of finished images (B, 3, H, W) or (3, H, W) in [0, 1] against their contents
    (same shape), one StyleLosses per image, measured by a loss_meter (Stylizer.evaluate)."""
    if meter.config != meter_config(meter.config):  # a trial's stylizer would give weighted terms
        raise ConfigError("unweighted_losses needs a loss meter: build it with loss_meter(trial, ...)")
    if images.ndim == 3:
        images, contents = images.unsqueeze(0), contents.unsqueeze(0)
    if images.shape != contents.shape:
        raise ConfigError(f"images {tuple(images.shape)} and contents {tuple(contents.shape)} differ")
    terms = meter.evaluate(images.float(), contents.float())  # weights 1: the raw terms, (B,) each
    rows = zip(*(terms[k].double().cpu().tolist() for k in ("content", "style", "tv")), strict=True)
    return [StyleLosses(content_loss=c, style_loss=s, tv_loss=t) for c, s, t in rows]


# ---------------------------------------------------------------- GPU share of a trial

GIB = 2**30
FP32_BYTES = 4


def _vgg19_floats_per_pixel(deepest: str = "conv5_1") -> int:
    """fp32 values the forward keeps per input pixel down to `deepest` (VGGTaps: every conv and
    every out-of-place ReLU output, every pool output), each at its block's resolution: block b
    runs at 1/4**(b-1) of the pixels, its pool writes at 1/4**b. Plus the 3-channel input."""
    widths = iter(c for c in torchvision.models.vgg.cfgs["E"] if c != "M")
    total, channels = 3.0, 0
    for name in arch_layer_names("vgg19"):
        block = int(name[4])  # conv{b}_{k}, relu{b}_{k}, pool{b}
        if name.startswith("conv"):
            channels = next(widths)
        scale = 4.0 ** -(block if name.startswith("pool") else block - 1)
        total += channels * scale
        if name == deepest:
            return round(total)
    raise ConfigError(f"{deepest} is not a VGG-19 layer")


VGG19_FLOATS_PER_PIXEL = _vgg19_floats_per_pixel()
"""611 fp32 values per input pixel down to conv5_1, the lab's deepest tap: block 1 (64 ch,
conv + ReLU twice) 256, block 2 (128 ch, 1/4 px) 128, block 3 (256 ch x 8, 1/16) 128, block 4
(512 ch x 8, 1/64) 64, conv5_1 (1/256) 2, the four pools 30, the input 3."""
EXTRA_FLOATS_PER_PIXEL = 4 * 3 + 8
"""The image, its gradient and Adam's two moments (3 channels each), the relu4_4 content target
(512 ch at 1/64 px)."""
BYTES_PER_PIXEL = FP32_BYTES * (2 * VGG19_FLOATS_PER_PIXEL + EXTRA_FLOATS_PER_PIXEL)
"""~4.9 KB per pixel and image: the activations are kept for the backward, which makes gradients
of the same sizes (x2); fp32, so an upper bound for bf16 runs."""
VGG19_WEIGHT_BYTES = 80 * 10**6
"""VGG-19 features: 20.0 M fp32 parameters."""
CUDA_CONTEXT_BYTES = GIB // 2
"""Each trial is its own process with its own CUDA context, cuDNN and cuBLAS workspaces."""
MAX_TRIALS_PER_GPU = 8


def trial_memory_bytes(height: int, width: int, batch: int) -> int:
    """Estimated peak GPU memory of one style trial stylising `batch` images of height x width."""
    return height * width * batch * BYTES_PER_PIXEL + VGG19_WEIGHT_BYTES + CUDA_CONTEXT_BYTES


def gpu_fraction_per_trial(height: int, width: int, batch: int, gpu_memory_gib: float) -> float:
    """The GPU share a trial requests: trial_memory_bytes / GPU memory rounded up to 1/n
    (n = 1..8), so n trials pack on one GPU exactly. ConfigError if a whole GPU is too small."""
    if min(height, width, batch) < 1 or not gpu_memory_gib > 0:
        raise ConfigError(f"need height, width, batch >= 1 and GPU memory > 0, got "
                          f"{height}x{width}, batch {batch}, {gpu_memory_gib} GiB")
    need = trial_memory_bytes(height, width, batch) / (gpu_memory_gib * GIB)
    if need > 1:
        raise ConfigError(
            f"a style trial of {batch} x {height}x{width} needs about {need * gpu_memory_gib:.1f} GiB, "
            f"more than a {gpu_memory_gib:g} GiB GPU: use a smaller size or batch")
    return 1 / min(MAX_TRIALS_PER_GPU, math.floor(1 / need))


# ---------------------------------------------------------------- pictures of a sweep


def swept_label(values: Mapping[str, Any], keys: Sequence[str] | None = None, sep: str = "\n") -> str:
    """'key=value' for the swept keys (default all), numbers in 3 significant digits."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)
    return sep.join(f"{k}={fmt(values[k])}" for k in (values if keys is None else keys))


def contact_sheet_png(
    tiles: Sequence[tuple[Image.Image | np.ndarray, str]],
    order_keys: Sequence[Any] | None = None, *,
    height: int | None = None, columns: int | None = None, gap: int = 4,
) -> bytes:
    """One tile per trial, its label (lines split on newlines) underneath, tiles sorted by
    order_keys (one sortable key per tile, e.g. the swept values; None: as given), in rows of
    `columns` (default ~square). Images (H, W, 3) uint8 or PIL are scaled to `height` (default:
    the first's) with aspect kept; a cell is as wide as its image or its label."""
    if not tiles:
        raise ConfigError("no tiles for a contact sheet")
    if order_keys is not None:
        if len(order_keys) != len(tiles):
            raise ConfigError(f"{len(order_keys)} order keys for {len(tiles)} tiles")
        tiles = [tiles[i] for i in sorted(range(len(tiles)), key=lambda i: order_keys[i])]
    images = [img.convert("RGB") if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, np.uint8))
              for img, _ in tiles]
    height = height or images[0].height
    font = ImageFont.load_default()
    line_h = font.getbbox("Ag")[3] + 3
    n_lines = max(label.count("\n") + 1 for _, label in tiles)
    cells = [_cell(img, label, height, n_lines, line_h, font) for img, (_, label) in zip(images, tiles, strict=True)]
    columns = columns or math.ceil(math.sqrt(len(cells)))
    rows = [cells[i:i + columns] for i in range(0, len(cells), columns)]
    # every cell already has the same height: comparison_picture only lays them out
    sheet = comparison_picture(rows, height=cells[0].height, gap=gap)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def _cell(image: Image.Image, label: str, height: int, n_lines: int, line_h: int, font) -> Image.Image:
    """The image at `height` px (Lanczos, aspect kept) over a white band of n_lines text lines."""
    width = max(1, round(image.width * height / image.height))
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS, reducing_gap=3.0)
    lines = label.split("\n")
    text_w = max(math.ceil(font.getlength(line)) for line in lines) + 4
    cell = Image.new("RGB", (max(width, text_w), height + 2 + n_lines * line_h), "white")
    cell.paste(image, (0, 0))
    draw = ImageDraw.Draw(cell)
    for k, line in enumerate(lines):
        draw.text((2, height + 2 + k * line_h), line, fill="black", font=font)
    return cell


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates when minimising both coordinates (q
    dominates p: q <= p in both, < in one), in order of x then y. Equal points are all kept;
    points with a NaN or infinite coordinate are never on the front."""
    finite = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]
    front: list[int] = []
    best_y, last = math.inf, None
    for i in sorted(finite, key=lambda i: (points[i][0], points[i][1], i)):
        p = tuple(points[i])
        if p == last or p[1] < best_y:  # a duplicate of a front point, or a new lowest y
            front.append(i)
            best_y, last = p[1], p
    return front


def pareto_png(
    rows: Sequence[Mapping[str, Any]], x_key: str = "content_loss", y_key: str = "style_loss",
    label_keys: Sequence[str] = (), title: str = "",
) -> bytes:
    """Scatter of every trial (x_key vs y_key), the Pareto front joined, ringed and labelled with
    label_keys' values; an axis is logarithmic when its positive values span > 2 decades (and none
    is <= 0). Trials with non-finite values are left out (counted in the title)."""
    points = [(float(r[x_key]), float(r[y_key])) for r in rows]
    keep = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]
    front = [keep[j] for j in pareto_front([points[i] for i in keep])]
    fig, ax = new_figure(6, 4.5, dpi=100)
    ax.scatter([points[i][0] for i in keep], [points[i][1] for i in keep], s=18, c="tab:blue",
               alpha=0.6, label="trial")
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-", color="tab:red",
            marker="o", markersize=9, markerfacecolor="none", label="Pareto front")
    for i in front if label_keys else ():
        ax.annotate(swept_label(rows[i], label_keys, sep=", "), points[i], xytext=(5, 4),
                    textcoords="offset points", fontsize=7)
    for values, set_scale in (([points[i][0] for i in keep], ax.set_xscale),
                              ([points[i][1] for i in keep], ax.set_yscale)):
        if values and min(values) > 0 and max(values) / min(values) > 100:
            set_scale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    dropped = len(rows) - len(keep)
    return figure_png(fig, ax, title + (f" ({dropped} non-finite left out)" if dropped else ""))
