"""Labelled image grids: augmentation galleries and contact sheets (save_image_grid, matplotlib),
and side-by-side comparisons at exact pixel sizes (comparison_picture, PIL).

matplotlib's object API on the Agg canvas (no pyplot, no global figure state), so it is safe in
Ray workers and threads and never needs a display. The PNG goes through cvray.storage, so `path`
may be a local path or an object-store URI and is written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from cvray import storage
from cvray.errors import DataError

GridImage = Image.Image | torch.Tensor | np.ndarray
"""PIL image; tensor (3, H, W) or (H, W) as float in [0, 1] or uint8; or array (H, W, 3) uint8."""


def save_image_grid(
    rows: Sequence[tuple[str, Sequence[GridImage]]],
    path: str,
    title: str | None = None,
    *,
    cell_inches: float = 1.4,
    dpi: int = 100,
    column_titles: Sequence[str] | None = None,
    palette_colors: int | None = None,
) -> tuple[int, int]:
    """Draw one labelled row per (label, images) entry and write a PNG to `path`.

    Rows may hold different numbers of images (shorter rows leave blank cells) and images of any
    size (each is scaled into its cell, aspect kept). `palette_colors` (e.g. 256) quantises the PNG
    to that many colours (dithered): photos then take about a third of the bytes, for docs and contact sheets.
    Returns the PNG's (width, height) in pixels. Raises DataError when there is nothing to draw or
    the file cannot be written.
    """
    if not rows or not any(len(images) for _, images in rows):
        raise DataError(f"{path}: no images to draw")
    n_rows, n_cols = len(rows), max(len(images) for _, images in rows)
    label_inches = 0.25 + 0.07 * max(len(label) for label, _ in rows)  # room for the row labels
    title_inches = 0.4 if title else 0.0
    header_inches = 0.25 if column_titles else 0.0
    fig = Figure(
        figsize=(label_inches + n_cols * cell_inches, title_inches + header_inches + n_rows * cell_inches),
        dpi=dpi,
    )
    canvas = FigureCanvasAgg(fig)
    width_in, height_in = fig.get_size_inches()
    grid = fig.add_gridspec(
        n_rows, n_cols,
        left=label_inches / width_in, right=1 - 0.05 / width_in,
        top=1 - (title_inches + header_inches) / height_in, bottom=0.05 / height_in,
        wspace=0.05, hspace=0.05,
    )
    for r, (label, images) in enumerate(rows):
        for c in range(n_cols):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                array = _as_array(images[c])
                grey = {"cmap": "gray", "vmin": 0, "vmax": 255} if array.ndim == 2 else {}
                ax.imshow(array, interpolation="antialiased", **grey)
            else:
                ax.set_axis_off()
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
            if r == 0 and column_titles and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=9)
    if title:
        fig.suptitle(title, y=1 - 0.1 / height_in, va="top", fontsize=12)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    png = buffer.getvalue()
    if palette_colors:
        png = _quantise_png(png, palette_colors)
    try:
        storage.write_bytes_atomic(path, png)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
    return canvas.get_width_height()


def _as_array(image: GridImage) -> np.ndarray:
    """Any accepted image -> (H, W, 3) uint8 or (H, W) array for imshow."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        if tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
            if tensor.shape[-1] == 1:
                tensor = tensor[..., 0]
        return tensor.numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    return array


def _quantise_png(png: bytes, colors: int) -> bytes:
    """Re-encode as a palette PNG: octree palette, Floyd-Steinberg dithering (no banding on photos)."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    palette = img.quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
    out = io.BytesIO()
    img.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(out, format="PNG", optimize=True)
    return out.getvalue()


LABEL_HEIGHT = 18
"""Pixels under each image of comparison_picture for its caption."""


def comparison_picture(
    rows: Sequence[Sequence[Image.Image]],
    labels: Sequence[Sequence[str]] | None = None,
    height: int | None = None,
    gap: int = 4,
) -> Image.Image:
    """Images in rows at exact pixel sizes (PIL, no matplotlib), each scaled to one height
    (default: the first image's), a caption under each when `labels` is given; white background."""
    height = height or rows[0][0].height
    scaled = [[_to_height(img, height) for img in row] for row in rows]
    label_h = LABEL_HEIGHT if labels else 0
    width = max(sum(img.width for img in row) + gap * (len(row) - 1) for row in scaled)
    total_h = len(scaled) * (height + label_h) + gap * (len(scaled) - 1)
    canvas = Image.new("RGB", (width, total_h), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    y = 0
    for r, row in enumerate(scaled):
        x = 0
        for c, img in enumerate(row):
            canvas.paste(img.convert("RGB"), (x, y))
            if labels:
                draw.text((x + 2, y + height + 3), labels[r][c], fill="black", font=font)
            x += img.width + gap
        y += height + label_h + gap
    return canvas


def _to_height(img: Image.Image, height: int) -> Image.Image:
    if img.height == height:
        return img
    width = max(1, round(img.width * height / img.height))
    return img.resize((width, height), Image.LANCZOS, reducing_gap=3.0)
