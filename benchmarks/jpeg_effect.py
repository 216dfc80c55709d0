"""How lossy is the shared CIFAR-10 Parquet (JPEG quality 75, 4:2:0 chroma), compared with a
second JPEG pass we can apply ourselves? One JSON object, CPU only.

The Parquet holds JPEG re-encodings of CIFAR-10, and the lossless originals are not here, so the
accuracy the JPEGs cost cannot be measured directly. This script measures the pixel damage instead:

- first pass: PSNR of quality-75 JPEG on lossless 32x32 images, made the way CIFAR's were (crops
  of lossless photos downsampled to 32x32), i.e. what the Parquet's encoder did to CIFAR;
- second pass: PSNR of another quality-75 pass over the Parquet's images, with the 8x8 block grid
  shifted by SHIFT pixels (an aligned re-encode is nearly idempotent and would damage little).

When a shifted second pass does about as much damage as the first did, training on twice-
compressed data (benchmarks/gpu_cifar.py --recipes bf16:0:1:rejpeg) estimates what the first
pass costs in test accuracy: the drop from once- to twice-compressed data.

    python benchmarks/jpeg_effect.py [--data-dir ../shared/data/cifar10] [--images N]
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path

QUALITY = 75
SHIFT = 3  # odd: moves both the 8x8 DCT grid and the 2x2 chroma grid off the first pass's
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def jpeg_roundtrip(image_hwc: np.ndarray, quality: int = QUALITY, shift: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 -> the same after a JPEG encode/decode (Pillow: 4:2:0 chroma below q90),
    with the block grid shifted by `shift` pixels (reflect-padded, then cropped back)."""
    padded = np.pad(image_hwc, ((shift, 0), (shift, 0), (0, 0)), mode="reflect") if shift else image_hwc
    buffer = io.BytesIO()
    Image.fromarray(padded).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return decoded[shift:, shift:]


def rejpeg_images(images_nchw: np.ndarray, shift: int = SHIFT, quality: int = QUALITY) -> np.ndarray:
    """A second, shifted JPEG pass over (N, 3, H, W) uint8 images; same shape and dtype."""
    out = np.empty_like(images_nchw)
    for i, image in enumerate(images_nchw):
        out[i] = jpeg_roundtrip(image.transpose(1, 2, 0), quality, shift).transpose(2, 0, 1)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels of two uint8 arrays."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")


def lossless_tiles(paths: list[Path], count: int, seed: int = 0) -> np.ndarray:
    """(count, 32, 32, 3) uint8: random square crops (64..256 px) of lossless photos, downsampled
    with a box filter to 32x32 as CIFAR's 32x32 images were made from larger ones."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in paths]
    tiles = np.empty((count, 32, 32, 3), np.uint8)
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(64, min(256, *photo.size) + 1))
        x, y = (int(rng.integers(0, d - side + 1)) for d in photo.size)
        tiles[i] = np.asarray(photo.crop((x, y, x + side, y + side)).resize((32, 32), Image.BOX))
    return tiles


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(SHARED / "cifar10"))
    parser.add_argument("--photos", default=str(SHARED / "images" / "content"), help="folder of lossless PNG photos")
    parser.add_argument("--images", type=int, default=2000, help="images per measurement")
    args = parser.parse_args(argv)
    from cvray.classification.cifar import load_cifar10

    arrays = load_cifar10(args.data_dir, download=False, train_samples=args.images, test_samples=1)
    cifar = arrays.train_images.numpy()  # (N, 3, 32, 32): the Parquet's decoded JPEGs
    pngs = sorted(Path(args.photos).glob("*.png"))
    tiles = lossless_tiles(pngs, args.images)
    first = np.stack([jpeg_roundtrip(t) for t in tiles])
    result = {
        "benchmark": "jpeg_effect", "quality": QUALITY, "images": args.images,
        "lossless_photos": [p.name for p in pngs],
        "first_pass_psnr_db": round(psnr(tiles, first), 2),
        "first_pass_psnr_db_per_photo": {
            p.name: round(psnr(tiles[i::len(pngs)], first[i::len(pngs)]), 2) for i, p in enumerate(pngs)
        },
        "first_pass_twice_psnr_db": round(psnr(first, np.stack([jpeg_roundtrip(t, shift=SHIFT) for t in first])), 2),
    }
    for shift in (0, 1, 2, SHIFT, 4):
        result[f"cifar_second_pass_shift{shift}_psnr_db"] = round(psnr(cifar, rejpeg_images(cifar, shift)), 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
