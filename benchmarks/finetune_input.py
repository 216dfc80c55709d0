"""Fine-tuning input pipeline: the lab's ImageFolder + PIL DataLoader vs cvray's decode-once ragged
images + batched crops, on the same folder of real-size JPEGs, side by side. Prints ONE JSON object.

Both sides produce what the model eats: normalised float32 batches (B, 3, 224, 224) and labels,
one shuffled epoch at a time, batch 128 (the lab's).

  lab     torchvision ImageFolder(train/) with the lab's train transform, per sample:
          RandomResizedCrop(224) + RandomHorizontalFlip() + ToTensor() + Normalize(ImageNet);
          DataLoader(batch 128, shuffle=True, num_workers=W): every JPEG is decoded every epoch.
          W = 0 is the lab as written (d2l passes no num_workers), W = 2 what this machine allows.
  cvray   cvray.classification.finetune.load_image_folder once (Pillow, draft mode, shorter side
          the job's decode size; its seconds are reported apart), then per epoch: a permutation,
          the batch's RaggedImages views (DeviceDataset.batches) and CropTrain(224, "imagenet"):
          boxes for the batch, each box cut from its uint8 image and resized (antialiased).

Also the eval pipelines on the same images: lab Resize((256, 256)) + CenterCrop(224) + ToTensor +
Normalize through the same DataLoader vs cvray CropEval(224, "imagenet"). "First epoch" adds
cvray's one-time decode (both splits: what load_image_folder does) to its first epoch;
"five_epochs" compares the lab's default run (5 epochs, each a train and an eval pass) in input
seconds. Rounds interleave the pipelines, so load from other processes hits them alike; rates are
the median and the best of the rounds (the ratios use medians, the faster lab loader against the
faster of cvray's torch thread counts).

The folder (built in a temporary directory, not timed): JPEG quality 90, two classes, crops of the
photos in DATA/images/{content,style} rescaled to long sides of 300-500 px (like the hot-dog
set's) and, for --large-share of them, 800-1600 px; a test split of a quarter as many images.

    python benchmarks/finetune_input.py [--images 400] [--rounds 3] [--num-workers 0,2] [--data DIR]

Smallest check: --images 16 --rounds 1 --num-workers 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T  # the lab's (v1) transforms

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from _bootstrap import REPO_ROOT
from cvray.classification.config import FinetuneConfig
from cvray.classification.datasets import DeviceDataset
from cvray.classification.finetune import FinetuneRecipe, load_image_folder
from cvray.classification.transforms import EVAL_RESIZE_PER_CROP, CropEval, CropTrain
from cvray.images import IMAGENET_MEAN, IMAGENET_STD

SMALL_LONG_SIDE = (300, 500)
"""Long sides of most generated photos (the hot-dog set's are about this size)."""
LARGE_LONG_SIDE = (800, 1600)
JPEG_QUALITY = 90
MAX_ASPECT = 16 / 9
BUSY_LOAD = 1.5
"""A 1-minute load average above this (on this 2-core machine) marks the figures as measured shared."""


# ------------------------------------------------------------------ the folder of real-size JPEGs


def default_data_dir() -> Path:
    """.devdata/ of the checkout when it has images (the GPU host), else the shared data folder."""
    dev = REPO_ROOT / ".devdata"
    return dev if (dev / "images").is_dir() else REPO_ROOT.parent / "shared" / "data"


def source_photos(data_dir: Path) -> list[Path]:
    """The photos in DATA/images/{content,style}, sorted."""
    found = sorted(p for sub in ("content", "style") if (data_dir / "images" / sub).is_dir()
                   for p in (data_dir / "images" / sub).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not found:
        raise SystemExit(f"no photos under {data_dir}/images/content or .../style")
    return found


def _one_photo(original: Image.Image, rng: np.random.Generator, long_side: int) -> Image.Image:
    """A random crop of `original` (each side 55-100 %, so aspects vary up to 16:9), rescaled (Lanczos) so its
    long side is `long_side` px, flipped half the time. The crop is never smaller than the target,
    unless the photo itself is (then it is enlarged a little)."""
    width, height = original.size
    fw, fh = rng.uniform(0.55, 1.0, 2)
    cw, ch = max(1, round(width * fw)), max(1, round(height * fh))
    cw, ch = min(cw, round(ch * MAX_ASPECT)), min(ch, round(cw * MAX_ASPECT))  # no panoramas
    if max(cw, ch) < long_side:  # grow the crop (aspect kept) up to the whole photo
        grow = min(long_side / max(cw, ch), width / cw, height / ch)
        cw, ch = min(width, round(cw * grow)), min(height, round(ch * grow))
    left, top = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
    crop = original.crop((left, top, left + cw, top + ch))
    scale = long_side / max(cw, ch)
    photo = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.LANCZOS)
    return photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else photo


def write_photo_folder(
    root: Path, train_images: int, *, test_images: int | None = None, data_dir: Path | None = None,
    large_share: float = 0.2, small: tuple[int, int] = SMALL_LONG_SIDE, large: tuple[int, int] = LARGE_LONG_SIDE,
    seed: int = 0, threads: int | None = None,
) -> dict:
    """train/<class>/NNNNN.jpg and test/<class>/NNNNN.jpg under `root`: JPEG quality 90, two classes
    (the photos of content/ and of style/), long sides uniform in `small`, or in `large` for a
    `large_share` of them (drawn from the photos at least 800 px long). Returns what was written."""
    sources = source_photos(data_dir or default_data_dir())
    originals = [(Image.open(p).convert("RGB"), p.parent.name) for p in sources]
    if len({cls for _, cls in originals}) != 2:  # not two source folders: alternate the classes instead
        originals = [(img, ("a", "b")[i % 2]) for i, (img, _) in enumerate(originals)]
    classes = sorted({cls for _, cls in originals})
    photos = {cls: [k for k, (_, c) in enumerate(originals) if c == cls] for cls in classes}
    big = {cls: [k for k in ks if max(originals[k][0].size) >= large[0]] or ks for cls, ks in photos.items()}
    test_images = max(2, train_images // 4) if test_images is None else test_images
    jobs = [("train", i) for i in range(train_images)] + [("test", i) for i in range(test_images)]

    def make(job: tuple[str, int]) -> tuple[int, int, int, bool]:
        split, i = job
        rng = np.random.default_rng([seed, split == "test", i])
        is_large = bool(rng.random() < large_share)
        cls = classes[i % 2]  # classes alternate: every split holds both
        k = int(rng.choice(big[cls])) if is_large else photos[cls][(i // 2) % len(photos[cls])]
        low, high = large if is_large else small
        image = originals[k][0]
        photo = _one_photo(image, rng, int(rng.integers(low, high + 1)))
        path = root / split / cls / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo.save(path, quality=JPEG_QUALITY)
        return photo.width, photo.height, path.stat().st_size, is_large

    with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:  # Pillow frees the GIL
        made = list(pool.map(make, jobs))
    long_sides = [max(w, h) for w, h, _, _ in made]
    return {
        "train_images": train_images, "test_images": test_images, "classes": classes,
        "source_photos": len(sources), "jpeg_quality": JPEG_QUALITY,
        "long_side_px": {"min": min(long_sides), "median": int(statistics.median(long_sides)),
                         "max": max(long_sides)},
        "large_images": sum(m[3] for m in made), "portrait": sum(w < h for w, h, _, _ in made),
        "megapixels_mean": round(float(np.mean([w * h for w, h, _, _ in made])) / 1e6, 3),
        "kilobytes_mean": round(float(np.mean([m[2] for m in made])) / 1e3, 1),
    }


# ------------------------------------------------------------------ the two pipelines


def lab_transforms(crop: int) -> dict[str, T.Compose]:
    """The lab's train_augs and test_augs (d2l fine-tuning), for crop 224 exactly the lab's."""
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    resize = round(crop * EVAL_RESIZE_PER_CROP)
    return {
        "train": T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(), normalize]),
        "eval": T.Compose([T.Resize((resize, resize)), T.CenterCrop(crop), T.ToTensor(), normalize]),
    }


def lab_epoch(loader: DataLoader, crop: int) -> float:
    """Seconds for one pass of the lab's DataLoader, worker start-up included (as in the lab)."""
    start = time.perf_counter()
    count = 0
    for batch, labels in loader:
        assert batch.dtype == torch.float32 and batch.shape[1:] == (3, crop, crop)
        count += len(labels)
    seconds = time.perf_counter() - start
    assert count == len(loader.dataset)
    return seconds


def cvray_epoch(data: DeviceDataset, transform, batch_size: int, crop: int, generator, shuffle: bool) -> float:
    """Seconds for one pass: a permutation, each batch's uint8 images (views), the batch
    transform -> float32 (B, 3, crop, crop)."""
    start = time.perf_counter()
    order = torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
    count = 0
    for images, labels in data.batches(order, batch_size):
        x = transform(images, generator)
        assert x.dtype == torch.float32 and x.shape[1:] == (3, crop, crop)
        count += len(labels)
    seconds = time.perf_counter() - start
    assert count == len(data)
    return seconds


def rate(samples: int, seconds: list[float]) -> dict:
    return {
        "epoch_seconds": [round(s, 3) for s in seconds],
        "samples_per_sec_median": round(samples / statistics.median(seconds), 1),
        "samples_per_sec_best": round(samples / min(seconds), 1),
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine from /proc/stat, of this process and its reaped
    children): their growth apart tells how much CPU other processes took meanwhile. None off Linux."""
    import resource

    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / ticks  # all but idle and iowait (guest is in user)
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return busy, own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="training images (the test split gets a quarter)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one epoch of each pipeline)")
    parser.add_argument("--batch-size", type=int, default=128, help="the lab's 128")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--num-workers", default="0,2", help="lab DataLoader workers to measure, comma-separated")
    parser.add_argument("--large-share", type=float, default=0.2, help="share of 800-1600 px photos")
    parser.add_argument("--data", type=Path, default=None, help="folder with images/{content,style} (default: "
                        ".devdata if it has them, else ../shared/data)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the lab's main process "
                        "(default torch's; its DataLoader workers take 1 each)")
    parser.add_argument("--cvray-threads", default="1,2", help="torch threads for cvray's batches, comma-separated "
                        "(each measured; the faster is compared)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.images < 2 or args.rounds < 1:
        parser.error("--images must be at least 2 and --rounds at least 1")
    workers = [int(w) for w in args.num_workers.split(",")]
    cvray_threads = [int(t) for t in args.cvray_threads.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start, cpu_start, wall_start = load_average(), cpu_seconds(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="finetune_input_") as tmp:
        root = Path(tmp)
        build_start = time.perf_counter()
        folder = write_photo_folder(root, args.images, data_dir=args.data, large_share=args.large_share,
                                    seed=args.seed)
        folder["build_seconds"] = round(time.perf_counter() - build_start, 2)
        result = measure(root, args, workers, cvray_threads)
    load_end, cpu_end, wall = load_average(), cpu_seconds(), time.perf_counter() - wall_start
    others = None
    if cpu_start and cpu_end:  # CPU other processes used meanwhile, as a share of all the machine's CPUs
        busy, own = cpu_end[0] - cpu_start[0], cpu_end[1] - cpu_start[1]
        others = round(max(0.0, busy - own) / (wall * (os.cpu_count() or 1)), 3)
    shared = load_start > BUSY_LOAD or (others is not None and others > 0.1)
    result = {"benchmark": "finetune_input", "folder": folder, **result}
    result["environment"] = {
        "cpu_count": os.cpu_count(), "torch_threads_main": torch.get_num_threads(), "cvray_threads": cvray_threads,
        "loadavg_1min_start_end": [load_start, load_end],
        "other_processes_cpu_share": others,
        "shared_machine": shared,
        "note": ("the end load average includes this run's own 2-3 busy processes; other_processes_cpu_share is "
                 "the CPU time others used during the run (from /proc/stat) over wall time x cpu_count. "
                 + (f"Shared: load above {BUSY_LOAD} at the start or others above 10 % of the CPUs; both sides "
                    "alike (interleaved rounds)" if shared else "Quiet machine")),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
        "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))


def measure(root: Path, args, workers: list[int], cvray_threads: list[int]) -> dict:
    crop, batch_size = args.crop, args.batch_size
    tfs = lab_transforms(crop)
    loaders = {}
    for w in workers:
        for split, tf in tfs.items():
            dataset = datasets.ImageFolder(str(root / "train"), transform=tf)
            loaders[(split, w)] = DataLoader(dataset, batch_size=batch_size, shuffle=split == "train", num_workers=w)
    n = len(loaders[("train", workers[0])].dataset)
    main_threads = torch.get_num_threads()

    config = FinetuneRecipe().resolve(FinetuneConfig(data_dir=str(root), scratch=True, crop_size=crop,
                                                     batch_size=batch_size))
    start = time.perf_counter()
    data = load_image_folder(config)
    decode_seconds = time.perf_counter() - start
    train = DeviceDataset(data.train_images, data.train_labels)
    decoded_images = len(data.train_labels) + len(data.test_labels)
    cvray_tf = {"train": CropTrain(crop, "imagenet"), "eval": CropEval(crop, "imagenet")}
    generator = torch.Generator().manual_seed(args.seed)

    lab_s = {key: [] for key in loaders}
    cvray_s = {(split, t): [] for split in ("train", "eval") for t in cvray_threads}
    for _ in range(args.rounds):  # interleaved: every pipeline once per round
        for split in ("train", "eval"):
            torch.set_num_threads(main_threads)  # the lab's main process (its workers take 1 thread each)
            for w in workers:
                lab_s[(split, w)].append(lab_epoch(loaders[(split, w)], crop))
            for t in cvray_threads:
                torch.set_num_threads(t)
                cvray_s[(split, t)].append(
                    cvray_epoch(train, cvray_tf[split], batch_size, crop, generator, split == "train"))
    torch.set_num_threads(main_threads)

    def fastest(rates: dict) -> tuple[str, dict]:
        return max(rates.items(), key=lambda item: item[1]["samples_per_sec_median"])

    lab = {split: {f"workers_{w}": rate(n, lab_s[(split, w)]) for w in workers} for split in ("train", "eval")}
    cvray = {split: {f"threads_{t}": rate(n, cvray_s[(split, t)]) for t in cvray_threads}
             for split in ("train", "eval")}
    best_lab = {split: fastest(lab[split]) for split in lab}
    best_cvray = {split: fastest(cvray[split]) for split in cvray}
    lab_rate = {split: best_lab[split][1]["samples_per_sec_median"] for split in lab}
    cvray_rate = {split: best_cvray[split][1]["samples_per_sec_median"] for split in cvray}
    threads_first = int(best_cvray["train"][0].removeprefix("threads_"))
    first_train_seconds = cvray_s[("train", threads_first)][0]
    first_seconds = decode_seconds + first_train_seconds
    train_share = len(data.train_labels) / decoded_images
    first_estimate = decode_seconds * train_share + first_train_seconds
    epochs = FinetuneConfig().epochs  # the lab's 5
    lab_run = epochs * (n / lab_rate["train"] + n / lab_rate["eval"])
    cvray_run = decode_seconds + epochs * (n / cvray_rate["train"] + n / cvray_rate["eval"])
    first_epoch = {
        "seconds": round(first_seconds, 3), "samples_per_sec": round(n / first_seconds, 1),
        "samples_per_sec_train_decode_only_estimate": round(n / first_estimate, 1),
        "torch_threads": threads_first,
        "note": "one-time decode of both splits (load_image_folder) + the first train epoch of round 1; the "
                "estimate counts only the train split's share of the decode (by file count)",
    }
    decode = {
        "seconds": round(decode_seconds, 3), "images": decoded_images,
        "images_per_sec": round(decoded_images / decode_seconds, 1), "decode_size": config.decode_size,
        "ragged_megabytes": round((train.images.nbytes + data.test_images.nbytes) / 2**20, 1),
    }
    steady = cvray_rate["train"] / lab_rate["train"]
    return {
        "batch_size": batch_size, "crop": crop, "rounds": args.rounds, "train_images_per_epoch": n,
        "lab": {"pipeline": {"train": "ImageFolder + RandomResizedCrop + RandomHorizontalFlip + ToTensor + "
                                      "Normalize, DataLoader(shuffle=True), decode every epoch",
                             "eval": "ImageFolder + Resize((R, R)) + CenterCrop + ToTensor + Normalize, DataLoader"},
                **lab},
        "cvray": {"pipeline": {"train": "load_image_folder once; randperm, RaggedImages views, CropTrain",
                               "eval": "the decoded images; RaggedImages views, CropEval"},
                  **cvray, "first_epoch": first_epoch, "decode": decode},
        "ratio": {
            "steady_train": round(steady, 2),
            "compared": {split: f"cvray {best_cvray[split][0]} vs lab {best_lab[split][0]} (the faster of each), "
                                "median epochs" for split in ("train", "eval")},
            "steady_train_by_lab_loader": {key: round(cvray_rate["train"] / r["samples_per_sec_median"], 2)
                                           for key, r in lab["train"].items()},
            "first_epoch": round(first_epoch["samples_per_sec"] / lab_rate["train"], 2),
            "eval": round(cvray_rate["eval"] / lab_rate["eval"], 2),
            "five_epochs_with_eval": round(lab_run / cvray_run, 2),
        },
        "target_steady_ratio": 3.0,
        "meets_target": steady >= 3.0,
        "five_epochs_input_seconds": {"lab": round(lab_run, 2), "cvray": round(cvray_run, 2)},
    }


if __name__ == "__main__":
    main()
