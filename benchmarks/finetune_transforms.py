"""How far cvray's fine-tuning crops are from the lab's PIL transforms, and which decode size
(the shorter side S each image is decoded at once) to use by default. Prints ONE JSON object.

The lab decodes every JPEG at full resolution every epoch and crops with PIL (antialiased). cvray
decodes each file once, shorter side S (cvray.images.decode_image_at: Pillow draft mode + Lanczos),
then cuts each crop box from the uint8 pixels and resizes it on its own (bilinear, antialiased:
cvray.classification.transforms.resize). Reference
= the lab's path on the original full-resolution image; every comparison is on [0, 255] pixels
before normalisation (cvray's float output as the model gets it, the lab's uint8):

- eval: cvray CropEval(224) on the S-decoded image vs torchvision Resize((256, 256)) +
  CenterCrop(224) on the original: PSNR (pooled MSE), median per-image PSNR, mean abs difference;
- train: the same RandomResizedCrop boxes (cvray.classification.augment.sample_crop_boxes with
  torchvision's scale and ratio on the ORIGINAL size, scaled to the decoded size and rounded to
  its pixels, as cvray draws them there) through cvray's resize vs
  torchvision.transforms.functional.resized_crop(original, ..., (224, 224),
  antialias=True); split by box area (small: under --small-area of the image, large: the rest)
  and by the original's size (long side under 800 px, or larger; eval too);
- decode: decode_image_at alone vs Pillow full decode + Lanczos to the same size;
- S = "full": cvray's crops on the full-resolution original, i.e. the crop + resize alone;
- ragged bytes per image at each S (what a worker holds per image).

recommended_decode_size: quality per byte, by a rule fixed here (RULE): the smallest S whose
train PSNR (all boxes, as training samples them) and eval PSNR are both within TOLERANCE_DB of the
best S's (the tolerance doubling until some S qualifies); a larger S costs bytes (~S^2) for less.

    python benchmarks/finetune_transforms.py [--images 100] [--boxes 8] [--sizes 224,256,288,320,384]

Photos as benchmarks/finetune_input.py builds them (quality-90 JPEGs, long sides 300-500 px and,
for a fifth, 800-1600 px). Smallest check: --images 4 --boxes 2.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from benchmarks.finetune_input import write_photo_folder
from cvray.classification import transforms
from cvray.classification.augment import sample_crop_boxes
from cvray.classification.finetune import shorter_side
from cvray.classification.transforms import EVAL_RESIZE_PER_CROP, RRC_RATIO, RRC_SCALE, CropEval
from cvray.images import decode_image_at

TOLERANCE_DB = 0.5
RULE = (f"smallest S whose train PSNR (all boxes) and eval PSNR are both within {TOLERANCE_DB} dB of the best S's; "
        "when no S is, the tolerance doubles until one is")
LARGE_ORIGINAL = 800
"""Originals with a long side of at least this many px count as large (the 800-1600 px photos)."""


class Errors:
    """Pooled squared and absolute errors (on [0, 255]) and per-sample PSNRs of one comparison."""

    def __init__(self):
        self.sq = self.abs = self.count = 0.0
        self.per_sample: list[float] = []

    def add(self, ours: torch.Tensor, reference: torch.Tensor) -> None:
        """ours, reference: float (N, 3, h, w) in [0, 255]; one sample per leading index."""
        diff = ours.double() - reference.double()
        for d in diff:
            mse = float((d * d).mean())
            self.per_sample.append(psnr(mse))
        self.sq += float((diff * diff).sum())
        self.abs += float(diff.abs().sum())
        self.count += diff.numel()

    def summary(self) -> dict:
        if not self.count:
            return {"samples": 0}
        return {"psnr_db": round(psnr(self.sq / self.count), 2),
                "psnr_db_median": round(statistics.median(self.per_sample), 2),
                "identical_samples": sum(p == IDENTICAL for p in self.per_sample),
                "mean_abs_diff": round(self.abs / self.count, 3), "samples": len(self.per_sample)}


IDENTICAL = 100.0
"""The PSNR recorded for an identical sample (e.g. a decode that needed no draft mode)."""


def psnr(mse: float) -> float:
    return 10 * math.log10(255.0**2 / mse) if mse > 0 else IDENTICAL


def pil_to_float(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float (3, h, w) in [0, 255]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).double()


def uint8_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def scaled_boxes(boxes: torch.Tensor, sy: float, sx: float) -> list[tuple[int, int, int, int]]:
    """(top, left, h, w) boxes on the original, in the decoded image's pixels (at least 1 px, inside it)."""
    return [(round(top * sy), round(left * sx), max(1, round(h * sy)), max(1, round(w * sx)))
            for top, left, h, w in boxes.tolist()]


def measure(files: list[Path], sizes: list[int], boxes_per_image: int, crop: int, small_area: float,
            seed: int) -> dict:
    resize = round(crop * EVAL_RESIZE_PER_CROP)
    lab_eval = T.Compose([T.Resize((resize, resize)), T.CenterCrop(crop)])  # PIL: antialiased bilinear
    crop_eval = CropEval(crop, "none")
    keys = [*sizes, "full"]
    names = ("eval", "eval_small_originals", "eval_large_originals", "train", "train_small", "train_large",
             "train_small_originals", "train_large_originals", "decode")
    errors = {s: {name: Errors() for name in names} for s in keys}
    ragged_bytes = {s: [] for s in sizes}
    generator = torch.Generator().manual_seed(seed)
    for path in files:
        data = path.read_bytes()
        original = Image.open(io.BytesIO(data)).convert("RGB")  # the lab's full decode
        width, height = original.size
        large_original = max(width, height) >= LARGE_ORIGINAL
        eval_ref = pil_to_float(lab_eval(original)).unsqueeze(0)
        boxes = sample_crop_boxes(boxes_per_image, height, width, RRC_SCALE, RRC_RATIO, generator, "cpu")
        train_ref = torch.stack([pil_to_float(TF.resized_crop(original, *map(int, box), [crop, crop], antialias=True))
                                 for box in boxes.tolist()])
        small = (boxes[:, 2] * boxes[:, 3]).double() / (height * width) < small_area
        for s in keys:
            if s == "full":
                decoded = original
            else:
                decoded, _ = decode_image_at(data, shorter_side(s), name=path.name)
                reference = original.resize(decoded.size, Image.LANCZOS)  # full decode + Lanczos, same size
                errors[s]["decode"].add(pil_to_float(decoded).unsqueeze(0), pil_to_float(reference).unsqueeze(0))
                ragged_bytes[s].append(3 * decoded.width * decoded.height)
            x = uint8_chw(decoded)
            ours_eval = crop_eval([x]).double() * 255.0
            errors[s]["eval"].add(ours_eval, eval_ref)
            errors[s]["eval_large_originals" if large_original else "eval_small_originals"].add(ours_eval, eval_ref)
            boxes_here = scaled_boxes(boxes, decoded.height / height, decoded.width / width)
            ours = torch.stack([transforms.resize(x[:, top:top + h, left:left + w], (crop, crop)).double()
                                for top, left, h, w in boxes_here])
            errors[s]["train"].add(ours, train_ref)
            for mask, name in ((small, "train_small"), (~small, "train_large")):
                if mask.any():
                    errors[s][name].add(ours[mask], train_ref[mask])
            errors[s]["train_large_originals" if large_original else "train_small_originals"].add(ours, train_ref)
    out = {}
    for s in keys:
        row = {name: e.summary() for name, e in errors[s].items() if e.count}
        if s != "full":
            row["ragged_bytes_per_image"] = round(statistics.mean(ragged_bytes[s]))
        out[str(s)] = row
    return out


def recommend(per_size: dict, sizes: list[int]) -> dict:
    """RULE applied to the measured PSNRs; also the marginal dB per doubling of bytes between sizes."""
    train = {s: per_size[str(s)]["train"]["psnr_db"] for s in sizes}
    evals = {s: per_size[str(s)]["eval"]["psnr_db"] for s in sizes}
    nbytes = {s: per_size[str(s)]["ragged_bytes_per_image"] for s in sizes}
    best_train, best_eval = max(train.values()), max(evals.values())
    tolerance = TOLERANCE_DB
    while True:  # ends: at the largest gap every size qualifies
        ok = [s for s in sizes if train[s] >= best_train - tolerance and evals[s] >= best_eval - tolerance]
        if ok:
            break
        tolerance *= 2
    chosen = min(ok)
    ordered = sorted(sizes)
    marginal = {
        f"{a}->{b}": {"train_db_per_doubling": round((train[b] - train[a]) / math.log2(nbytes[b] / nbytes[a]), 2),
                      "eval_db_per_doubling": round((evals[b] - evals[a]) / math.log2(nbytes[b] / nbytes[a]), 2)}
        for a, b in zip(ordered, ordered[1:], strict=False) if nbytes[b] > nbytes[a]
    }
    return {"recommended_decode_size": chosen, "rule": RULE, "tolerance_db_used": tolerance, "qualifying_sizes": ok,
            "train_psnr_db": train, "eval_psnr_db": evals, "ragged_bytes_per_image": nbytes,
            "marginal_quality_per_byte": marginal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100, help="photos compared")
    parser.add_argument("--boxes", type=int, default=8, help="RandomResizedCrop boxes per photo")
    parser.add_argument("--sizes", default="224,256,288,320,384", help="decode sizes S (shorter side, px)")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--small-area", type=float, default=0.3, help="boxes under this share of the image are small")
    parser.add_argument("--data", type=Path, default=None, help="folder with images/{content,style}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if args.images < 1 or args.boxes < 1 or min(sizes) < args.crop:
        parser.error("--images and --boxes must be positive, every size at least --crop")
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="finetune_transforms_") as tmp:
        folder = write_photo_folder(Path(tmp), args.images, test_images=0, data_dir=args.data, seed=args.seed + 1)
        files = sorted(Path(tmp).glob("train/*/*.jpg"))
        per_size = measure(files, sizes, args.boxes, args.crop, args.small_area, args.seed)
    result = {
        "benchmark": "finetune_transforms",
        "photos": {k: folder[k] for k in ("train_images", "jpeg_quality", "long_side_px", "large_images",
                                          "megapixels_mean")},
        "crop": args.crop, "boxes_per_image": args.boxes, "small_box_area_below": args.small_area,
        "reference": "torchvision PIL transforms on the full-resolution decode (the lab's path): eval "
                     "Resize((256, 256)) + CenterCrop(224); train resized_crop(..., antialias=True)",
        "by_decode_size": per_size,
        "default_decode_size_today": round(args.crop * EVAL_RESIZE_PER_CROP),
        **recommend(per_size, sizes),
        "seconds": round(time.perf_counter() - start, 1),
        "environment": {"cpu_count": os.cpu_count(), "loadavg_1min_start_end": [load_start,
                                                                                 round(os.getloadavg()[0], 2)],
                        "torch": torch.__version__, "torchvision": torchvision.__version__,
                        "pillow": PIL.__version__},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
