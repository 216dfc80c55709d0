"""Input pipeline: the lab's PIL DataLoader vs cvray's in-memory batched augmentation.

Both sides produce what the model eats: float32 batches (B, 3, 32, 32) in [0, 1] (plus labels),
one shuffled epoch at a time, measured side by side in one run.

  lab     a torchvision-style dataset over CIFAR as numpy uint8 (N, 32, 32, 3); per sample
          Image.fromarray + Compose([RandomHorizontalFlip(), ToTensor()]); torch DataLoader
          (batch 256, shuffle, num_workers=2 here; the lab uses 4)
  cvray   the uint8 (N, 3, 32, 32) tensor in memory, a permutation per epoch, index_select a batch,
          BatchAugment(("flip",))

Also: every cvray preset alone, and the lab's full composition (flip + ColorJitter(0.5 x4) +
RandomResizedCrop(32)) through the same PIL DataLoader vs BatchAugment(("all",)).
Prints ONE JSON object. Plain PyTorch, no Ray:

    python benchmarks/input_pipeline.py [--samples 50000] [--epochs 2] [--data-dir DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T  # the lab's (v1) transforms

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from cvray.classification.augment import CROP_RATIO, CROP_SCALE, JITTER, BatchAugment
from cvray.classification.config import AUG_PRESETS


class LabCifar(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: uint8 HWC array -> PIL -> transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        self.images_hwc, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.images_hwc)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images_hwc[index])), int(self.labels[index])


def lab_loader(images_hwc, labels, transform, batch_size, num_workers) -> DataLoader:
    return DataLoader(LabCifar(images_hwc, labels, transform), batch_size=batch_size, shuffle=True,
                      num_workers=num_workers)


def lab_epoch(loader: DataLoader) -> float:
    """Seconds for one epoch of the lab's DataLoader, worker start-up included (as in the lab)."""
    start = time.perf_counter()
    for batch, _labels in loader:  # noqa: B007 - the last batch is checked below
        pass
    seconds = time.perf_counter() - start
    assert batch.dtype == torch.float32 and batch.shape[1:] == (3, 32, 32)
    return seconds


def cvray_epoch(images, labels, augmenter, batch_size, generator) -> float:
    """Seconds for one epoch: shuffle indices, gather a uint8 batch, augment it on its device."""
    _sync(images.device)
    start = time.perf_counter()
    order = torch.randperm(len(images), generator=generator, device=images.device)
    for first in range(0, len(images), batch_size):
        index = order[first:first + batch_size]
        # index_select, not images[index]: advanced indexing is ~20x slower on CPU here
        batch = augmenter(images.index_select(0, index), generator=generator)
        batch_labels = labels.index_select(0, index)
    _sync(images.device)
    seconds = time.perf_counter() - start
    assert batch.dtype == torch.float32 and batch.shape[1:] == (3, 32, 32) and len(batch_labels) == len(batch)
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(samples: int, seconds: list[float]) -> dict:
    """Throughput of the best epoch (least disturbed by other load) and of the mean epoch."""
    return {
        "epoch_seconds": [round(s, 3) for s in seconds],
        "samples_per_sec": round(samples / min(seconds), 1),
        "samples_per_sec_mean": round(samples * len(seconds) / sum(seconds), 1),
    }


def load_data(args) -> tuple[np.ndarray, np.ndarray, str]:
    """(N, 32, 32, 3) uint8 and (N,) labels: synthetic uniform noise, or CIFAR from --data-dir."""
    if args.data_dir is None:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.samples, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, args.samples)
        return images, labels, f"synthetic uniform uint8, {args.samples} images"
    from cvray.classification.cifar import load_cifar10  # only this mode needs the CIFAR readers

    data = load_cifar10(args.data_dir, download=False, train_samples=args.samples)
    images = data.train_images.permute(0, 2, 3, 1).contiguous().numpy()
    note = f"CIFAR-10 train ({data.source}) from {args.data_dir}, {len(images)} images"
    return images, data.train_labels.numpy(), note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000, help="images per epoch")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2, help="the lab's DataLoader workers (lab: 4)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed per pipeline (best is reported)")
    parser.add_argument("--data-dir", default=None, help="real CIFAR-10 (python/parquet/folders); default synthetic")
    parser.add_argument("--device", default="cpu", help="where cvray's batches live and are augmented")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in this process (default: torch's)")
    parser.add_argument("--skip-lab-all", action="store_true", help="skip the slow PIL flip+color+crop loader")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    images_hwc, labels_np, data_note = load_data(args)
    samples = len(images_hwc)
    device = torch.device(args.device)
    images = torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous().to(device)  # (N, 3, 32, 32)
    labels = torch.from_numpy(np.asarray(labels_np, dtype=np.int64)).to(device)
    load_start = os.getloadavg()[0]

    lab_transforms = {"flip": T.Compose([T.RandomHorizontalFlip(), T.ToTensor()])}
    if not args.skip_lab_all:
        lab_transforms["all"] = T.Compose([
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER, hue=JITTER),
            T.RandomResizedCrop(32, scale=CROP_SCALE, ratio=CROP_RATIO),
            T.ToTensor(),
        ])
    loaders = {name: lab_loader(images_hwc, labels_np, transform, args.batch_size, args.num_workers)
               for name, transform in lab_transforms.items()}
    augmenters = {name: BatchAugment((name,)) for name in AUG_PRESETS}
    generator = torch.Generator(device=device).manual_seed(0)
    lab_seconds = {name: [] for name in loaders}
    cvray_seconds = {name: [] for name in augmenters}
    # Rounds interleave the pipelines, so that load from other processes hits them alike.
    for _ in range(args.epochs):
        for name, loader in loaders.items():
            lab_seconds[name].append(lab_epoch(loader))
            cvray_seconds[name].append(cvray_epoch(images, labels, augmenters[name], args.batch_size, generator))
        for name, augmenter in augmenters.items():
            if name not in loaders:
                cvray_seconds[name].append(cvray_epoch(images, labels, augmenter, args.batch_size, generator))
    lab = {name: _rate(samples, seconds) for name, seconds in lab_seconds.items()}
    cvray = {name: _rate(samples, seconds) for name, seconds in cvray_seconds.items()}

    result = {
        "benchmark": "input_pipeline",
        "data": data_note,
        "batch_size": args.batch_size,
        "epochs_timed": args.epochs,
        "lab_flip": {
            "pipeline": "Image.fromarray + Compose([RandomHorizontalFlip(), ToTensor()]), DataLoader(shuffle=True)",
            "num_workers": args.num_workers,
            **lab["flip"],
        },
        "cvray_flip": {"pipeline": "in-memory uint8 tensor, randperm, index_select, BatchAugment(('flip',))",
                       **cvray["flip"]},
        "speedup_flip": round(cvray["flip"]["samples_per_sec"] / lab["flip"]["samples_per_sec"], 1),
        "cvray_presets_samples_per_sec": {name: rate["samples_per_sec"] for name, rate in cvray.items()},
    }
    if "all" in lab:
        result["lab_all"] = {"pipeline": "PIL flip + ColorJitter(0.5 x4) + RandomResizedCrop(32) + ToTensor",
                             "num_workers": args.num_workers, **lab["all"]}
        result["cvray_all"] = {"pipeline": "BatchAugment(('all',))", **cvray["all"]}
        result["speedup_all"] = round(cvray["all"]["samples_per_sec"] / lab["all"]["samples_per_sec"], 1)
    result["environment"] = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
