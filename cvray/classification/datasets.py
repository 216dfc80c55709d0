"""Labelled image sets for the training loop: plain PyTorch, knows nothing of Ray.

A worker holds its data on the training device as uint8 (a dense (N, 3, H, W) tensor when every
image has one size, e.g. CIFAR; RaggedImages when sizes differ, e.g. photos decoded with their
aspect kept) and builds each batch with tensor ops: no per-sample Python, no DataLoader. Under
torch.distributed each worker takes a disjoint shard of a per-epoch permutation every worker draws
alike. A source of batches (EpochSource) can also stream them (cvray.on_ray.streaming).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

ImageBatch = torch.Tensor | list[torch.Tensor]
"""The uint8 images of one batch on the training device: (B, 3, H, W) when they share one size,
else a list of B (3, h_i, w_i) tensors (views into RaggedImages; the batch transform crops and
resizes each to the model's input size)."""
Batch = tuple[ImageBatch, torch.Tensor]
"""(images, int64 labels (B,)), on the training device."""


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle (the same on every worker); workers derive theirs from it."""
    return seed * 1_000_003 + epoch


def shard_indices(num_samples: int, num_shards: int, shard: int, seed: int, epoch: int) -> torch.Tensor:
    """This shard's sample indices for one epoch: a block of a permutation every shard draws alike.

    Shards are disjoint and equally long (the < num_shards leftover samples sit out this epoch,
    different ones each epoch), so every worker runs the same number of steps, as DDP needs.
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    permutation = torch.randperm(num_samples, generator=generator)
    per_shard = num_samples // num_shards
    return permutation[shard * per_shard:(shard + 1) * per_shard]


class RaggedImages:
    """uint8 RGB images of different sizes in one flat buffer: image i is
    flat[offsets[i]:offsets[i] + 3 * h_i * w_i] viewed as (3, h_i, w_i). No padding is stored
    or made: a batch is a list of views (`views`), cropped image by image by the batch transform."""

    def __init__(self, flat: torch.Tensor, sizes: torch.Tensor):
        self.flat = flat  # (sum of 3 * h * w,) uint8
        self.sizes = sizes.to(torch.int64)  # (N, 2): (h, w) per image, on the flat buffer's device
        self._hw = [(int(h), int(w)) for h, w in sizes.tolist()]  # host copies: slicing needs no sync
        counts = [3 * h * w for h, w in self._hw]
        self._offsets = np.concatenate(([0], np.cumsum(counts))).tolist() if counts else [0]
        if self._offsets[-1] != flat.numel():
            raise ValueError(f"sizes describe {self._offsets[-1]} bytes, the buffer holds {flat.numel()}")

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> RaggedImages:
        """From (h, w, 3) uint8 arrays (PIL order), stored channel-first."""
        parts = [np.ascontiguousarray(a.transpose(2, 0, 1)).ravel() for a in arrays]
        flat = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        sizes = np.array([a.shape[:2] for a in arrays], dtype=np.int64).reshape(-1, 2)
        return cls(torch.from_numpy(flat), torch.from_numpy(sizes))

    def __len__(self) -> int:
        return len(self._hw)

    @property
    def nbytes(self) -> int:
        return self.flat.numel()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RaggedImages:
        moved = RaggedImages.__new__(RaggedImages)
        moved.flat = self.flat.to(device, non_blocking=non_blocking)
        moved.sizes = self.sizes.to(device, non_blocking=non_blocking)
        moved._hw, moved._offsets = self._hw, self._offsets
        return moved

    def image(self, i: int) -> torch.Tensor:
        h, w = self._hw[i]
        return self.flat[self._offsets[i]:self._offsets[i] + 3 * h * w].view(3, h, w)

    def views(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The images at `indices` (host ints: slicing needs no device sync), each a (3, h, w) view."""
        return [self.image(i) for i in indices]

    def select(self, indices: Sequence[int]) -> RaggedImages:
        """A new RaggedImages holding copies of the images at `indices`, in that order."""
        chosen = list(indices)
        parts = [self.image(i).reshape(-1) for i in chosen]
        flat = torch.cat(parts) if parts else self.flat[:0].clone()
        sizes = self.sizes.index_select(0, torch.tensor(chosen, dtype=torch.int64, device=self.sizes.device))
        return RaggedImages(flat, sizes)


Images = torch.Tensor | RaggedImages
"""A dense uint8 (N, 3, H, W) tensor (every image one size, e.g. CIFAR) or RaggedImages."""

VALIDATION_SEED = 0x5EED
"""The hold-out draw's seed: fixed, so every trial of a sweep (whatever its --seed) holds out the
same images."""


def validation_split(num_samples: int, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), sorted: `share` of the samples (at least one when
    share > 0) held out by a fixed-seed permutation."""
    if share <= 0:
        return torch.arange(num_samples), torch.zeros(0, dtype=torch.int64)
    permutation = torch.randperm(num_samples, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    held = min(max(1, round(num_samples * share)), num_samples - 1)
    return permutation[held:].sort().values, permutation[:held].sort().values


def take(images: Images, indices: torch.Tensor) -> Images:
    """The images at `indices` (host tensor), of either kind."""
    if isinstance(images, RaggedImages):
        return images.select(indices.tolist())
    return images.index_select(0, indices)


@dataclass
class ImageClassData:
    """A labelled image set in host memory: what a recipe's dataset hands the training loop."""

    train_images: Images
    """(N, 3, H, W) uint8 contiguous, or RaggedImages; on the CPU."""
    train_labels: torch.Tensor
    """(N,) int64, indices into `classes`."""
    test_images: Images
    test_labels: torch.Tensor
    classes: list[str]
    source: str
    """Where it was read from, in words (e.g. the CIFAR format: "python", "parquet", "folders")."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(file, one-line reason) of every file left out because it could not be read."""

    def to_numpy(self) -> dict:
        """Plain numpy arrays and lists (Ray's object store shares numpy arrays between the
        workers of a node without copying them); from_numpy() turns them back."""
        out = {"classes": list(self.classes), "source": self.source, "skipped": list(self.skipped)}
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            if isinstance(images, RaggedImages):
                out[f"{split}_flat"], out[f"{split}_sizes"] = images.flat.numpy(), images.sizes.numpy()
            else:
                out[f"{split}_images"] = images.numpy()
            out[f"{split}_labels"] = getattr(self, f"{split}_labels").numpy()
        return out

    @classmethod
    def from_numpy(cls, arrays: dict) -> ImageClassData:
        with warnings.catch_warnings():  # object-store arrays are read-only; nothing writes to them
            warnings.filterwarnings("ignore", message=".*not writable.*")
            parts = []
            for split in ("train", "test"):
                if f"{split}_flat" in arrays:
                    images = RaggedImages(torch.from_numpy(arrays[f"{split}_flat"]),
                                          torch.from_numpy(arrays[f"{split}_sizes"]))
                else:
                    images = torch.from_numpy(arrays[f"{split}_images"])
                parts += [images, torch.from_numpy(arrays[f"{split}_labels"])]
        return cls(*parts, list(arrays["classes"]), arrays["source"], [tuple(s) for s in arrays["skipped"]])


@dataclass
class DeviceDataset:
    """A labelled image set held on the training device as uint8: images (dense (N, 3, H, W) or
    RaggedImages), labels (N,)."""

    images: Images
    labels: torch.Tensor

    @classmethod
    def to_device(cls, images: Images, labels: torch.Tensor, device: torch.device) -> DeviceDataset:
        return cls(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        """The samples at `indices` (on the host), in that order, `batch_size` at a time."""
        indices = indices.cpu()
        for begin in range(0, indices.numel(), batch_size):
            batch = indices[begin:begin + batch_size]
            on_device = batch.to(self.labels.device, non_blocking=True)
            labels = self.labels.index_select(0, on_device)
            if isinstance(self.images, RaggedImages):
                yield self.images.views(batch.tolist()), labels
            else:  # index_select: a plain gather (advanced indexing is ~20x slower on CPU here)
                yield self.images.index_select(0, on_device), labels

    def train_shard(self, rank: int, world_size: int, seed: int, epoch: int) -> torch.Tensor:
        """This worker's indices for a training epoch (see shard_indices)."""
        return shard_indices(len(self), world_size, rank, seed, epoch)

    def eval_shard(self, rank: int, world_size: int) -> torch.Tensor:
        """Every rank-th sample: shards cover the set exactly once (lengths may differ by one)."""
        return torch.arange(rank, len(self), world_size)


class EpochSource(Protocol):
    """Where one worker's batches come from, epoch by epoch: held in memory (InMemorySource) or
    streamed (cvray.on_ray.streaming). The training loop only sees batches."""

    classes: list[str]

    def train_batches(self, epoch: int, batch_size: int) -> tuple[Iterable[Batch], int]:
        """This worker's batches of one epoch (disjoint from the other workers'), and their sample count."""

    def test_batches(self, batch_size: int) -> Iterable[Batch]:
        """This worker's share of the test set (all workers together: each test image once)."""

    def val_batches(self, batch_size: int) -> Iterable[Batch]:
        """This worker's share of the validation set held out of the training data (none: empty)."""


class InMemorySource:
    """The splits held on the worker's device; each epoch a disjoint shard of a fresh permutation.
    val_share > 0 holds that share of the training images out (validation_split) for validation."""

    def __init__(self, data: ImageClassData, device: torch.device, seed: int, val_share: float = 0.0):
        self.classes = list(data.classes)
        self.rank, self.world_size = world()
        self.seed = seed
        train_images, train_labels, self.val = data.train_images, data.train_labels, None
        if val_share > 0:
            keep, held = validation_split(len(train_labels), val_share)
            self.val = DeviceDataset.to_device(take(train_images, held), train_labels.index_select(0, held), device)
            train_images, train_labels = take(train_images, keep), train_labels.index_select(0, keep)
        self.train = DeviceDataset.to_device(train_images, train_labels, device)
        self.test = DeviceDataset.to_device(data.test_images, data.test_labels, device)

    def train_batches(self, epoch: int, batch_size: int) -> tuple[Iterable[Batch], int]:
        indices = self.train.train_shard(self.rank, self.world_size, self.seed, epoch)
        return self.train.batches(indices, batch_size), len(indices)

    def test_batches(self, batch_size: int) -> Iterable[Batch]:
        return self.test.batches(self.test.eval_shard(self.rank, self.world_size), batch_size)

    def val_batches(self, batch_size: int) -> Iterable[Batch]:
        if self.val is None:
            return iter(())
        return self.val.batches(self.val.eval_shard(self.rank, self.world_size), batch_size)
