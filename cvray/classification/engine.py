"""Training engine for image classification: plain PyTorch, knows nothing of Ray.

The data path keeps the whole uint8 dataset on the device and builds each batch with tensor
ops (index, augment, convert), so there is no per-sample Python and no DataLoader. Works in one
process or under torch.distributed (one process per worker, e.g. started by Ray Train): each
worker trains on a disjoint shard of a shared per-epoch permutation and metrics are all-reduced.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cvray.classification.metrics import EvalSums, ProgressSums, TrainSums

Batch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]
"""(uint8 images (B, 3, H, W), int64 labels (B,), sizes), on the training device. sizes: None when
every image fills H x W; else int64 (B, 2), the (h, w) of each image, which sits in the top-left
corner of its zero-padded H x W slot (images of different sizes batched together)."""
LOSS_REDUCTIONS = ("mean", "sum")


class BatchTransform(Protocol):
    """uint8 images (B, 3, H, W) [+ sizes] -> float32 model input (B, 3, H', W'), on their device."""

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None, sizes: torch.Tensor | None = None
    ) -> torch.Tensor: ...


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


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked; fp32 otherwise (CPU bf16 is slower than fp32 here)."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_channels_last(device: torch.device, precision: str) -> bool:
    return device.type == "cuda" and precision == "bf16"


class RaggedImages:
    """uint8 RGB images of different sizes in one flat buffer: image i is
    flat[offsets[i]:offsets[i] + 3 * h_i * w_i] viewed as (3, h_i, w_i). No padding is stored;
    `gather` pads only the images of one batch."""

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

    def gather(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images at `indices`, zero-padded into one (B, 3, H, W) uint8 batch, and their sizes."""
        chosen = indices.tolist()
        height = max((self._hw[i][0] for i in chosen), default=0)
        width = max((self._hw[i][1] for i in chosen), default=0)
        out = torch.zeros((len(chosen), 3, height, width), dtype=torch.uint8, device=self.flat.device)
        for slot, i in enumerate(chosen):  # one copy per image: B small copies per batch
            h, w = self._hw[i]
            out[slot, :, :h, :w] = self.image(i)
        return out, self.sizes.index_select(0, indices.to(self.sizes.device))


Images = torch.Tensor | RaggedImages
"""A dense uint8 (N, 3, H, W) tensor (every image one size, e.g. CIFAR) or RaggedImages."""


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
        """The samples at `indices`, in that order, `batch_size` at a time."""
        indices = indices.to(self.labels.device)
        for begin in range(0, indices.numel(), batch_size):
            batch = indices[begin:begin + batch_size]
            labels = self.labels.index_select(0, batch)
            if isinstance(self.images, RaggedImages):
                images, sizes = self.images.gather(batch)
                yield images, labels, sizes
            else:  # index_select: a plain gather (advanced indexing is ~20x slower on CPU here)
                yield self.images.index_select(0, batch), labels, None

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


class InMemorySource:
    """Both splits held on the worker's device; each epoch a disjoint shard of a fresh permutation."""

    def __init__(self, data: ImageClassData, device: torch.device, seed: int):
        self.classes = list(data.classes)
        self.rank, self.world_size = world()
        self.seed = seed
        self.train = DeviceDataset.to_device(data.train_images, data.train_labels, device)
        self.test = DeviceDataset.to_device(data.test_images, data.test_labels, device)

    def train_batches(self, epoch: int, batch_size: int) -> tuple[Iterable[Batch], int]:
        indices = self.train.train_shard(self.rank, self.world_size, self.seed, epoch)
        return self.train.batches(indices, batch_size), len(indices)

    def test_batches(self, batch_size: int) -> Iterable[Batch]:
        return self.test.batches(self.test.eval_shard(self.rank, self.world_size), batch_size)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    num_examples: int,
    transform: BatchTransform,
    generator: torch.Generator | None,
    precision: str = "fp32",
    loss_reduction: str = "mean",
    progress: Callable[[ProgressSums], None] | None = None,
    progress_every_s: float = 60.0,
) -> TrainSums:
    """One pass over this worker's `batches` (`num_examples` samples in all).

    loss_reduction: "mean" backpropagates the mean per-sample cross-entropy of the worker's batch;
    "sum" backpropagates the per-sample sum times the world size, so that DDP's gradient average
    over workers equals the gradient of the global batch's summed loss (the lab's `.sum()`).
    progress: called with the running ProgressSums after a step once `progress_every_s` seconds
    have passed since the last call (for CPU epochs that take minutes; the device is synchronised
    only then). Returns this worker's TrainSums.
    """
    if loss_reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
    scale = world()[1] if loss_reduction == "sum" else 1
    model.train()
    loss_sum = correct = None
    seen = 0
    start = last_progress = time.perf_counter()
    for images, labels, sizes in batches:
        device = images.device
        if loss_sum is None:
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            correct = torch.zeros((), device=device, dtype=torch.int64)
        x = transform(images, generator, sizes)  # uint8 -> float32 (B, 3, H', W')
        if uses_channels_last(device, precision):
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x)
        losses = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
        loss = losses.mean() if loss_reduction == "mean" else losses.sum() * scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: a .item() per step would stall the GPU every batch.
        loss_sum += losses.detach().double().sum()
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += labels.numel()
        if progress is not None and time.perf_counter() - last_progress >= progress_every_s:
            last_progress = time.perf_counter()
            progress(ProgressSums(
                loss_sum=loss_sum.item(), correct=float(correct.item()), examples=float(seen),
                total=float(num_examples), seconds=last_progress - start,
            ))
    totals = TrainSums(
        loss_sum=loss_sum.item() if loss_sum is not None else 0.0,
        correct=float(correct.item()) if correct is not None else 0.0,
        examples=float(seen), seconds=0.0,
    )
    totals["seconds"] = time.perf_counter() - start  # .item() above synchronised the device
    return totals


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Batch], transform: BatchTransform, precision: str = "fp32"
) -> EvalSums:
    """Accuracy sums over `batches`. Pass the unwrapped model under DDP (DDP's forward is a
    collective, and evaluation shards may differ in length)."""
    was_training = model.training
    model.eval()
    correct, examples = None, 0
    for images, labels, sizes in batches:
        x = transform(images, None, sizes)
        if uses_channels_last(images.device, precision):
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(images.device, precision):
            logits = model(x)
        hits = (logits.argmax(dim=1) == labels).sum()
        correct = hits if correct is None else correct + hits
        examples += labels.numel()
    model.train(was_training)
    return EvalSums(correct=float(correct.item()) if correct is not None else 0.0, examples=float(examples))


def all_reduce_sums(sums: dict[str, float], device: torch.device, maximum: tuple[str, ...] = ()) -> dict[str, float]:
    """Sum (or, for keys in `maximum`, max) each value over all workers; identity in one process."""
    if world()[1] == 1:
        return dict(sums)
    keys = sorted(sums)
    summed = torch.tensor([0.0 if k in maximum else sums[k] for k in keys], device=device, dtype=torch.float64)
    maxed = torch.tensor([sums[k] if k in maximum else 0.0 for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    dist.all_reduce(maxed, op=dist.ReduceOp.MAX)
    return {k: float(maxed[i] if k in maximum else summed[i]) for i, k in enumerate(keys)}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (or torch.compile) wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
