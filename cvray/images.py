"""Image decoding and encoding: arbitrary user images into RGB, resizing, tensors, and the one
list of formats every job writes.

Plain Pillow + torch; no Ray. Every failure is a DataError with a one-line reason.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cvray import storage
from cvray.errors import DataError, first_line

if TYPE_CHECKING:
    import torch

_EXIF_ORIENTATION = 0x0112
# What Pillow raises for bad data (struct.error for some broken headers, EOFError for truncation).
_DECODE_ERRORS = (
    UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error,
    Image.DecompressionBombError,
)

# File suffix (lower case) -> the Pillow format written for it, with one quality per format.
WRITE_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".webp": "WEBP",
    ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
}
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, on [0, 1] pixels (torchvision's pretrained networks)."""
IMAGENET_STD = (0.229, 0.224, 0.225)

# Pillow's decompression-bomb guard stays on, at a limit that still admits large photos
# (about 32k x 32k); anything larger is refused before decoding.
Image.MAX_IMAGE_PIXELS = 1 << 30


def decode_image(data: bytes, *, max_side: int | None = None, name: str = "image") -> Image.Image:
    """Decode encoded bytes into an RGB PIL image, EXIF orientation applied.

    With `max_side`, the image is shrunk (aspect kept, never enlarged) so its long side is at most
    `max_side` pixels, using JPEG draft mode first so huge photos never become a full-size array.
    Raises DataError for empty, truncated, corrupt or non-image data.
    """
    if not data:
        raise DataError(f"{name}: empty file")
    try:
        img = Image.open(io.BytesIO(data))
        if max_side is not None and img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale when possible
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except _DECODE_ERRORS as exc:
        raise DataError(f"{name}: not a readable image ({_reason(exc)})") from None
    if max_side is not None and max(img.size) > max_side:
        img = shrink_to_long_side(img, max_side)
    return img


def decode_image_at(
    data: bytes, size_for: Callable[[int, int], tuple[int, int]], *, name: str = "image"
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode into an RGB image of exactly the size `size_for` picks; EXIF orientation applied.

    `size_for(width, height)` gets the upright original size (read from the header, before any
    pixel is decoded) and returns the (height, width) to produce; it may raise DataError (e.g.
    too small), so such files are never decoded. Large JPEGs decode in draft mode at a reduced
    scale, and everything is shrunk before a tensor exists. Returns (image, (width, height) of
    the upright original). DataError for empty, truncated, corrupt or non-image data.
    """
    if not data:
        raise DataError(f"{name}: empty file")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        swapped = img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # 90/270-degree turns
    except _DECODE_ERRORS as exc:
        raise DataError(f"{name}: not a readable image ({_reason(exc)})") from None
    upright = (height, width) if swapped else (width, height)
    out_h, out_w = size_for(*upright)
    try:
        if img.format == "JPEG" and out_w * out_h < upright[0] * upright[1]:
            img.draft("RGB", (out_h, out_w) if swapped else (out_w, out_h))  # stays >= the target
        img.load()
        img = _to_rgb(ImageOps.exif_transpose(img))
    except _DECODE_ERRORS as exc:
        raise DataError(f"{name}: not a readable image ({_reason(exc)})") from None
    if img.size != (out_w, out_h):
        img = img.resize((out_w, out_h), Image.LANCZOS, reducing_gap=3.0)
    return img, upright


def encode_image(img: Image.Image, fmt: str) -> bytes:
    """Encode an RGB image in a Pillow format (JPEG, PNG, WEBP, BMP, TIFF) at high quality."""
    buffer = io.BytesIO()
    img.convert("RGB").save(buffer, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
    return buffer.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    return encode_image(img, "PNG")


def format_for(path: str) -> str | None:
    """The Pillow format written for `path` by its suffix (WRITE_FORMATS), or None."""
    name = str(path).rsplit("/", 1)[-1]
    _, dot, suffix = name.rpartition(".")
    return WRITE_FORMATS.get(f".{suffix.lower()}") if dot else None


def load_image(path: str, *, max_side: int | None = None) -> Image.Image:
    """Read and decode a local path or object-store URI (see decode_image)."""
    return decode_image(storage.read_bytes(path), max_side=max_side, name=str(path))


def shrink_to_long_side(img: Image.Image, long_side: int) -> Image.Image:
    """Resize so the long side is `long_side` pixels (aspect kept, Lanczos)."""
    w, h = img.size
    scale = long_side / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(new, Image.LANCZOS, reducing_gap=3.0)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor (3, H, W) in [0, 1]."""
    import torch  # here, not at the top: decode-only workers (Ray Data tasks) never pay for torch

    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """float tensor (3, H, W) in [0, 1] (any device) -> RGB PIL image (values clamped)."""
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Alpha is composited on white; 16-bit and float are rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray((array / top * 255).round().clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
        return Image.fromarray((array * 255).round().astype(np.uint8)).convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "unrecognised format"  # Pillow's text names a BytesIO object, not the file
    return first_line(exc)
