"""The fine-tuning recipe (d2l "fine-tuning": hot dogs from an ImageNet ResNet-18), on any
labelled image folder. Plain PyTorch; no Ray.

The lab's numbers are FinetuneConfig's defaults. The lab sums per-sample losses before backward;
for SGD with weight decay that is no constant rescaling (the step is lr * (B_t * mean_grad +
wd * p), B_t the step's global batch, smaller on the last batch of an epoch), so this recipe
backpropagates the sum too ("sum" loss reduction: each worker's sum times the world size, which
DDP's gradient average turns into the global batch's sum) with the lab's lr and weight decay.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow.fs as pafs
import torch
from torch import nn

from cvray import storage
from cvray.classification import image_folders, models
from cvray.classification.config import DATA_PATHS, FinetuneConfig
from cvray.classification.datasets import ImageClassData, RaggedImages
from cvray.classification.recipes import Recipe, head_and_body_groups
from cvray.downloads import download_archive
from cvray.errors import ConfigError, DataError
from cvray.images import decode_image_at

HOTDOG_URL = "http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip"
HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"
HOTDOG_DIR = "~/.cache/cvray/hotdog"
"""FinetuneConfig's default data_dir: hotdog.zip is downloaded into it (as hotdog/) when empty."""
DECODE_THREADS = 8


class FinetuneRecipe(Recipe):
    name = "finetune"
    config_class: ClassVar = FinetuneConfig
    loss_reduction = "sum"

    def arch(self, config: FinetuneConfig) -> str:
        return config.arch or "resnet18"

    def resolve(self, config: FinetuneConfig) -> FinetuneConfig:
        """Fill in what the config leaves open (arch and normalisation from --init-from's run, crop
        and decode sizes from the arch); ConfigError for conflicting choices."""
        if config.scratch and (config.init_from or config.weights):
            raise ConfigError("--scratch trains from the architecture's default init: drop --init-from/--weights")
        if config.init_from and config.weights:
            raise ConfigError("--init-from and --weights both give starting weights: choose one")
        if config.data_path not in DATA_PATHS:
            raise ConfigError(f"unknown data path {config.data_path!r}; choose one of {', '.join(DATA_PATHS)}")
        arch, normalization = config.arch or "resnet18", config.normalization or "imagenet"
        if config.init_from:
            info = init_info(config.init_from)
            if config.arch is not None and config.arch != info["arch"]:
                raise ConfigError(f"--arch {config.arch} conflicts with --init-from {config.init_from} "
                                  f"(an {info['arch']} run): drop --arch")
            arch = info["arch"]
            normalization = info["transform"].get("normalization", "none")  # CIFAR runs: [0, 1] input
        models.input_size(arch)  # ConfigError for an unknown arch
        crop = config.crop_size or models.input_size(arch)
        decode = config.decode_size or default_decode_size(crop)
        if decode < crop:
            raise ConfigError(f"--decode-size {decode} is smaller than --crop-size {crop}")
        return config.replace(arch=arch, crop_size=crop, decode_size=decode, normalization=normalization)

    def build_model(self, config: FinetuneConfig, num_classes: int) -> nn.Module:
        arch = self.arch(config)
        if config.scratch:  # the lab's baseline: torchvision's default init, default fc init
            return models.build_model(arch, num_classes)
        if config.init_from:
            from cvray.classification.runs import load_model

            model, _ = load_model(config.init_from)
        else:
            model = models.pretrained_backbone(arch, config.weights)
        return models.replace_head(model.train(), arch, num_classes)

    def build_optimizer(self, config: FinetuneConfig, model: nn.Module, device: torch.device) -> torch.optim.SGD:
        if config.scratch:
            return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        groups = head_and_body_groups(model, config.lr, config.head_lr_mult, head=models.head_name(self.arch(config)))
        return torch.optim.SGD(groups, lr=config.lr, weight_decay=config.weight_decay)

    def transform(self, config: FinetuneConfig) -> dict[str, Any]:
        return {"preset": "crop", "crop_size": config.crop_size, "normalization": config.normalization or "imagenet"}

    def check(self, config: FinetuneConfig) -> None:
        """Build the model once where the job starts: missing or wrong weights fail before training."""
        self.build_model(config, num_classes=2)

    def load_data(self, config: FinetuneConfig) -> ImageClassData:
        return load_image_folder(config)

    def streams(self, config: FinetuneConfig) -> bool:
        """Whether the run streams its data through Ray Data instead of holding it decoded: the
        --data-path choice, or (auto) whether the decoded images would exceed memory_budget_gb."""
        if config.data_path != "auto":
            return config.data_path == "stream"
        files = list_folder(config)
        count = sum(len(f) for f in files.splits.values())
        return estimated_bytes(config, count) > config.memory_budget_gb * 2**30


def init_info(path: str) -> dict[str, Any]:
    """model.pt's info of an earlier run (arch, transform, classes), checked to be a cvray model."""
    from cvray.classification.runs import load_model

    _, info = load_model(path)
    return info


# ------------------------------------------------------------------ the data


def locate_data(data_dir: str, *, default_dir: str = HOTDOG_DIR, url: str = HOTDOG_URL,
                sha1: str = HOTDOG_SHA1) -> str:
    """The folder holding train/ and test/: `data_dir` itself, or the hotdog/ inside it. The
    default folder gets d2l's hotdog.zip (SHA-1 checked, file-locked) when it has neither."""
    for candidate in (data_dir, storage.join(data_dir, "hotdog")):
        if storage.is_dir(storage.join(candidate, "train")):
            return candidate
    default = os.path.abspath(os.path.expanduser(default_dir))
    if not storage.is_uri(data_dir) and os.path.abspath(os.path.expanduser(data_dir)) == default:
        download_archive(default, url=url, algorithm="sha1", digest=sha1, member="hotdog",
                         present=lambda: os.path.isdir(os.path.join(default, "hotdog", "train")),
                         what="hotdog.zip", hint="pass --data-dir with train/<class>/ and test/<class>/ folders")
        return os.path.join(default, "hotdog")
    if not storage.exists(data_dir):
        raise DataError(f"--data-dir {data_dir}: not found (expected {image_folders.LAYOUT})")
    return data_dir


def shorter_side(size: int):
    """size_for(width, height) -> (h, w) with the shorter side at `size` px, aspect kept."""
    def size_for(width: int, height: int) -> tuple[int, int]:
        scale = size / min(width, height)
        return max(size, round(height * scale)), max(size, round(width * scale))
    return size_for


def subset(files: list, limit: int | None, seed: int = 0) -> list:
    """A fixed class-interleaved subset: the first `limit` files of a seeded permutation."""
    if limit is None or limit >= len(files):
        return files
    order = np.random.default_rng(seed).permutation(len(files))[:limit]
    return [files[i] for i in sorted(order)]


@dataclass
class FolderFiles:
    """The files a run uses, listed and checked, not yet decoded."""

    root: str
    classes: list[str]
    splits: dict[str, list[image_folders.LabelledFile]]
    fs: pafs.FileSystem


def list_folder(config: FinetuneConfig) -> FolderFiles:
    """The labelled folder's files (the train_samples/test_samples subsets), checked (layout
    errors are DataErrors); downloads hotdog.zip into the default folder when it is empty."""
    root = locate_data(config.data_dir)
    listing = image_folders.list_labelled_folder(root)
    splits = {"train": subset(listing.splits["train"], config.train_samples),
              "test": subset(listing.splits["test"], config.test_samples)}
    return FolderFiles(root, listing.classes, splits, listing.fs)


def decode_to_array(size: int):
    """decode(data, name) -> (h, w, 3) uint8 with the shorter side at `size` (DataError if bad)."""
    size_for = shorter_side(size)

    def decode(data: bytes, name: str) -> np.ndarray:
        image, _ = decode_image_at(data, size_for, name=name)
        return np.asarray(image, dtype=np.uint8)
    return decode


DECODE_PER_CROP = 288 / 224
"""Default decode size (shorter side) per crop side: 288 px for 224 crops. Measured by
benchmarks/finetune_transforms.py against the lab's PIL path on full-resolution photos: 256 -> 288
gains 3.6 dB on the eval input and 0.6 dB on training crops for 1.27x the bytes; beyond 288 the
gains are steady (about 2.5 dB per doubling of bytes) with no knee (docs/finetune.md)."""


def default_decode_size(crop: int) -> int:
    return round(crop * DECODE_PER_CROP)


def load_image_folder(config: FinetuneConfig) -> ImageClassData:
    """Decode a labelled folder once, every image with its shorter side at decode_size (Pillow,
    draft mode for big JPEGs, EXIF orientation, any mode): ragged uint8 images in host memory.
    Unreadable files are skipped and listed, up to max_bad_share of a split."""
    files = list_folder(config)
    decode = decode_to_array(config.decode_size or default_decode_size(config.crop_size or 224))
    threads = min(DECODE_THREADS, os.cpu_count() or 1)
    parts, skipped = {}, []
    for split in ("train", "test"):
        decoded = image_folders.decode_files(
            files.splits[split], files.fs, decode, threads=threads, max_bad_share=config.max_bad_share,
            what=f"files of {storage.join(files.root, split)}",
        )
        if not decoded.arrays:
            raise DataError(f"{storage.join(files.root, split)}: no readable images")
        parts[split] = (RaggedImages.from_arrays(decoded.arrays), torch.from_numpy(decoded.labels))
        skipped += decoded.skipped
    return ImageClassData(*parts["train"], *parts["test"], files.classes, "image folders", skipped)


def estimated_bytes(config: FinetuneConfig, num_files: int) -> int:
    """Decoded size of `num_files` images at decode_size, assuming 4:3 photos (before decoding)."""
    side = config.decode_size or default_decode_size(config.crop_size or 224)
    return int(num_files * 3 * side * side * 4 / 3)


