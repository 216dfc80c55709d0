"""Pictures for style transfer: labelled image grids and loss curves (PIL + matplotlib, no Ray)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 18


def comparison_picture(
    rows: Sequence[Sequence[Image.Image]],
    labels: Sequence[Sequence[str]] | None = None,
    height: int | None = None,
    gap: int = 4,
) -> Image.Image:
    """Images in rows, each scaled to one height (default: the first image's), a caption under
    each when `labels` is given; white background."""
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


def loss_curves_png(losses: dict[str, np.ndarray], title: str = "") -> bytes:
    """PNG of per-iteration losses {name: (iterations,)} on a log scale, like the lab's animator."""
    from cvray.plots import figure_png  # imported first: it selects matplotlib's Agg backend

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for name, values in losses.items():
        values = np.asarray(values, dtype=np.float64)
        # log scale: zeros (the content loss at a content init) are left out, not drawn at -inf
        ax.plot(np.arange(1, len(values) + 1), np.where(values > 0, values, np.nan), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (weighted)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return figure_png(fig, ax, title)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _to_height(img: Image.Image, height: int) -> Image.Image:
    if img.height == height:
        return img
    width = max(1, round(img.width * height / img.height))
    return img.resize((width, height), Image.LANCZOS, reducing_gap=3.0)
