"""Which image decoder cvray should use, side by side in one run. Prints one JSON object.

Two jobs, each timed on 1 thread and on a pool of 2 threads (best of --repeats, candidates
interleaved), as images/sec and as a ratio to the baseline:

- photos: real-size JPEGs decoded once and resized so the SHORTER side is S pixels (aspect kept;
  S = 256, then 224 and 320 for the two fastest). Candidates: Pillow full decode + BILINEAR or
  LANCZOS resize; Pillow draft mode (DCT scaling) + LANCZOS, i.e. cvray.images.decode_image_at
  (the baseline); torchvision.io.decode_jpeg + antialiased bilinear F.interpolate on the uint8
  tensor; TorchCodec's decode_jpeg + the same interpolate. Each one's S=256 output is also
  compared with Pillow full decode + LANCZOS (mean absolute difference, PSNR), so a faster
  decoder that blurs or aliases shows it.
- CIFAR-10: the 32x32 JPEG bytes of the Parquet's train split, decoded to (3, 32, 32) uint8 by
  Pillow (the baseline), torchvision.io.decode_jpeg one by one and as one batched call on a list,
  and TorchCodec likewise; each output is checked pixel for pixel against Pillow's.

The photos (--photos, quality 90, long side 320 to 1600 px, every other round portrait) are made
from the images in DATA/images/{content,style}, written into a temporary folder and read back as
bytes, so every decoder decodes the same files from memory. torch runs with one intra-op thread.
"1_thread_cpu" rates divide by CPU seconds, not wall seconds: what a busy machine skews least.
TorchCodec is optional: run the script with a python that has it installed as well (e.g. a venv
made with --system-site-packages) to measure it; otherwise the JSON says why it is absent.

    python benchmarks/image_decoders.py [--photos N] [--cifar N] [--repeats N] [--data DIR]

A quick check: --photos 10 --cifar 500 --repeats 1.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, features
from torchvision.io import ImageReadMode, decode_jpeg

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from cvray import images
from cvray.errors import first_line

LONG_SIDES = (320, 500, 800, 1200, 1600)
PHOTO_BASELINE = "pillow_draft_lanczos"
CIFAR_BASELINE = "pillow"

Decode = Callable[[bytes, int], object]  # (file bytes, S) -> image of shorter side S


def shorter_side_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) with the shorter side at `side` pixels, aspect kept."""
    if width <= height:
        return side, max(1, round(height * side / width))
    return max(1, round(width * side / height)), side


# ----------------------------------------------------------------------------- decoders

def pillow_full(resample: int) -> Decode:
    def decode(blob: bytes, side: int) -> Image.Image:
        img = Image.open(io.BytesIO(blob)).convert("RGB")
        return img.resize(shorter_side_size(*img.size, side), resample, reducing_gap=3.0)
    return decode


def pillow_draft(blob: bytes, side: int) -> Image.Image:
    img, _ = images.decode_image_at(blob, lambda w, h: shorter_side_size(w, h, side)[::-1])
    return img


def resize_tensor(image: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, h, w) with the shorter side at `side` (antialiased bilinear)."""
    width, height = shorter_side_size(image.shape[2], image.shape[1], side)
    return F.interpolate(image.unsqueeze(0), size=(height, width), mode="bilinear", antialias=True)[0]


def as_tensor(blob: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def tv_decode(blob: bytes) -> torch.Tensor:
    return decode_jpeg(as_tensor(blob), mode=ImageReadMode.RGB, apply_exif_orientation=True)


def tv_resized(blob: bytes, side: int) -> torch.Tensor:
    return resize_tensor(tv_decode(blob), side)


def tc_resized(tc_decode: Callable) -> Decode:
    return lambda blob, side: resize_tensor(tc_decode(blob, mode="RGB"), side)


def load_torchcodec() -> tuple[Callable | None, dict]:
    """TorchCodec's decode_jpeg, if it imports and decodes a JPEG here; what to report about it."""
    try:
        import torchcodec
        from torchcodec.decoders import decode_jpeg as tc_decode_jpeg

        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 40, 10)).save(buffer, format="JPEG")
        shape = tuple(tc_decode_jpeg(buffer.getvalue(), mode="RGB").shape)
        if shape != (3, 16, 16):
            raise RuntimeError(f"a 16x16 JPEG decoded to shape {shape}")
    except ImportError as exc:
        return None, {"available": False, "reason": f"not installed ({first_line(exc)})"}
    except (OSError, RuntimeError) as exc:  # e.g. its native libraries do not load
        return None, {"available": False, "reason": f"{type(exc).__name__}: {first_line(exc)}"}
    return tc_decode_jpeg, {"available": True, "version": torchcodec.__version__,
                            "api": "torchcodec.decoders.decode_jpeg (no DCT-scaled decoding)"}


def photo_decoders(tc_decode: Callable | None) -> dict[str, Decode]:
    decoders = {
        "pillow_full_bilinear": pillow_full(Image.BILINEAR),
        "pillow_full_lanczos": pillow_full(Image.LANCZOS),
        PHOTO_BASELINE: pillow_draft,
        "torchvision_interpolate": tv_resized,
    }
    if tc_decode is not None:
        decoders["torchcodec_interpolate"] = tc_resized(tc_decode)
    return decoders


def cifar_decoders(tc_decode: Callable | None) -> dict[str, Callable[[list[bytes]], list]]:
    def pillow(blobs: list[bytes]) -> list:
        return [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")).transpose(2, 0, 1) for b in blobs]

    decoders = {
        CIFAR_BASELINE: pillow,
        "torchvision": lambda blobs: [tv_decode(b) for b in blobs],
        "torchvision_batched": lambda blobs: decode_jpeg(
            [as_tensor(b) for b in blobs], mode=ImageReadMode.RGB, apply_exif_orientation=True),
    }
    if tc_decode is not None:
        decoders["torchcodec"] = lambda blobs: [tc_decode(b, mode="RGB") for b in blobs]
        decoders["torchcodec_batched"] = lambda blobs: tc_decode(blobs, mode="RGB")
    return decoders


# ----------------------------------------------------------------------------- timing

def split(items: list, parts: int) -> list[list]:
    step = math.ceil(len(items) / parts)
    return [items[i:i + step] for i in range(0, len(items), step)]


def elapsed(batch: Callable[[list], object], items: list, pool: ThreadPoolExecutor | None) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds for one pass over `items`."""
    wall, cpu = time.perf_counter(), time.process_time()
    if pool is None:
        batch(items)
    else:
        list(pool.map(batch, split(items, 8)))  # 4 chunks a thread, so uneven photos balance out
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(batches: dict[str, Callable[[list], object]], items: list, pools: dict, repeats: int) -> dict:
    """images/sec per candidate and thread count: best of `repeats`, candidates interleaved.

    "1_thread_cpu" divides by CPU seconds instead of wall seconds: the single-thread rate a busy
    machine (other processes taking the cores) degrades least.
    """
    best: dict[tuple[str, str], float] = {}
    names = list(batches)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # each repeat starts elsewhere
            for label, pool in pools.items():
                wall, cpu = elapsed(batches[name], items, pool)
                keep = {label: wall, "1_thread_cpu": cpu} if pool is None else {label: wall}
                for key, seconds in keep.items():
                    best[name, key] = min(best.get((name, key), math.inf), seconds)
    keys = sorted({key for _, key in best})
    return {name: {key: round(len(items) / best[name, key], 1) for key in keys} for name in names}


def per_image(decode: Decode, side: int) -> Callable[[list[bytes]], list]:
    return lambda blobs: [decode(b, side) for b in blobs]


def ratios(rates: dict, baseline: str) -> dict:
    return {name: {label: round(r / rates[baseline][label], 2) for label, r in by.items()}
            for name, by in rates.items()}


def scaling(rates: dict) -> dict:
    return {name: round(by["2_threads"] / by["1_thread"], 2) for name, by in rates.items()}


# ----------------------------------------------------------------------------- inputs and quality

def build_photos(data: Path, folder: Path, count: int) -> list[bytes]:
    """`count` JPEGs (quality 90) at long sides LONG_SIDES, written to `folder`; their bytes."""
    sources = sorted(p for sub in ("content", "style") for p in (data / "images" / sub).iterdir()
                     if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    originals = [Image.open(p).convert("RGB") for p in sources]
    blobs = []
    for i in range(count):
        rnd, k = divmod(i, len(originals))
        img = originals[k].transpose(Image.Transpose.ROTATE_90) if rnd % 2 else originals[k]
        long_side = LONG_SIDES[(k + rnd) % len(LONG_SIDES)]  # each source gets every size in turn
        scale = long_side / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        path = folder / f"{i:03d}.jpg"
        img.save(path, quality=90)
        blobs.append(path.read_bytes())
    return blobs


def describe_photos(blobs: list[bytes]) -> dict:
    sizes = [Image.open(io.BytesIO(b)).size for b in blobs]
    return {"count": len(blobs), "jpeg_quality": 90, "long_sides": list(LONG_SIDES),
            "portrait": sum(w < h for w, h in sizes),
            "megapixels_mean": round(float(np.mean([w * h for w, h in sizes])) / 1e6, 3),
            "kilobytes_mean": round(float(np.mean([len(b) for b in blobs])) / 1e3, 1)}


def to_hwc(image: object) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0).numpy()
    return np.asarray(image)


def quality(outputs: list[np.ndarray], reference: list[np.ndarray]) -> dict:
    """Mean absolute difference (0-255) and PSNR (pooled, and of the worst image) vs the reference."""
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(outputs, reference, strict=True)]
    pixels = sum(d.size for d in diffs)
    mses = [float((d.astype(np.float64) ** 2).mean()) for d in diffs]
    pooled = sum(m * d.size for m, d in zip(mses, diffs, strict=True)) / pixels
    return {"mean_abs_diff": round(sum(float(d.sum()) for d in diffs) / pixels, 3),
            "psnr_db": psnr(pooled), "psnr_db_worst_image": psnr(max(mses))}


def psnr(mse: float) -> float | None:
    return round(10 * math.log10(255.0**2 / mse), 2) if mse > 0 else None  # None: identical


# ----------------------------------------------------------------------------- the two jobs

def bench_photos(blobs: list[bytes], decoders: dict[str, Decode], pools: dict, repeats: int) -> dict:
    outputs = {name: [to_hwc(decode(b, 256)) for b in blobs] for name, decode in decoders.items()}  # warms up
    reference = outputs["pillow_full_lanczos"]
    result = {"inputs": describe_photos(blobs)}
    rates = measure({n: per_image(d, 256) for n, d in decoders.items()}, blobs, pools, repeats)
    result["s256_images_per_s"] = rates
    result["s256_ratio_to_" + PHOTO_BASELINE] = ratios(rates, PHOTO_BASELINE)
    result["s256_2_threads_over_1"] = scaling(rates)
    result["s256_quality_vs_pillow_full_lanczos"] = {n: quality(o, reference) for n, o in outputs.items()}
    fastest = sorted(rates, key=lambda n: rates[n]["1_thread_cpu"], reverse=True)[:2]
    for side in (224, 320):
        chosen = {n: per_image(decoders[n], side) for n in fastest}
        result[f"s{side}_images_per_s"] = measure(chosen, blobs, pools, repeats)
    return result


def bench_cifar(parquet: Path, count: int, tc_decode: Callable | None, pools: dict, repeats: int) -> dict:
    blobs = pq.read_table(parquet, columns=["image"]).column("image").slice(0, count).to_pylist()
    decoders = cifar_decoders(tc_decode)
    reference = np.stack(decoders[CIFAR_BASELINE](blobs))
    identical = {n: bool(np.array_equal(np.stack([np.asarray(x) for x in d(blobs)]), reference))
                 for n, d in decoders.items()}  # also warms every decoder up
    assert reference.shape[1:] == (3, 32, 32)
    rates = measure(decoders, blobs, pools, repeats)
    return {"images": len(blobs), "images_per_s": rates, "ratio_to_" + CIFAR_BASELINE: ratios(rates, CIFAR_BASELINE),
            "2_threads_over_1": scaling(rates), "pixels_identical_to_pillow": identical}


def versions(torchcodec_info: dict) -> dict:
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
            "libjpeg_turbo_in_pillow": features.version_feature("libjpeg_turbo"), "torchcodec": torchcodec_info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=60, help="real-size JPEGs to make and decode")
    parser.add_argument("--cifar", type=int, default=10_000, help="CIFAR-10 train JPEGs to decode")
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement; the best counts")
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"), help="holds images/ and cifar10/")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision")
    result = {"cpu_count": os.cpu_count(), "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    start = time.perf_counter()
    torch.set_num_threads(1)  # the pool supplies the parallelism; no intra-op threads on top
    tc_decode, tc_info = load_torchcodec()
    result["versions"] = versions(tc_info)
    result["torch_threads"] = torch.get_num_threads()
    with ThreadPoolExecutor(2) as two, tempfile.TemporaryDirectory() as tmp:
        pools = {"1_thread": None, "2_threads": two}
        blobs = build_photos(args.data, Path(tmp), args.photos)
        result["photos"] = bench_photos(blobs, photo_decoders(tc_decode), pools, args.repeats)
        parquet = args.data / "cifar10" / "train.parquet"
        result["cifar"] = bench_cifar(parquet, args.cifar, tc_decode, pools, args.repeats)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)  # other processes skew timings
    print(json.dumps(result))


if __name__ == "__main__":
    main()
