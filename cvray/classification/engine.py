"""Training engine for image classification: plain PyTorch, knows nothing of Ray.

The data path keeps the whole uint8 dataset on the device and builds each batch with tensor
ops (index, augment, convert), so there is no per-sample Python and no DataLoader. Works in one
process or under torch.distributed (one process per worker, e.g. started by Ray Train): each
worker trains on a disjoint shard of a shared per-epoch permutation and metrics are all-reduced.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cvray.classification.metrics import EvalSums, ProgressSums, TrainSums

Batch = tuple[torch.Tensor, torch.Tensor]
"""(uint8 images (B, 3, H, W), int64 labels (B,)), on the training device."""
BatchTransform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]
"""uint8 images (B, 3, H, W) -> float32 model input (B, 3, H', W'), on the images' device."""
LOSS_REDUCTIONS = ("mean", "sum")


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


@dataclass
class ImageClassData:
    """A labelled image set in host memory: what a recipe's dataset hands the training loop."""

    train_images: torch.Tensor
    """(N, 3, H, W) uint8, contiguous, on the CPU."""
    train_labels: torch.Tensor
    """(N,) int64, indices into `classes`."""
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    source: str
    """Where it was read from, in words (e.g. the CIFAR format: "python", "parquet", "folders")."""


@dataclass
class DeviceDataset:
    """A labelled image set held on the training device as uint8: images (N, 3, H, W), labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def to_device(cls, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> DeviceDataset:
        return cls(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        """The samples at `indices`, in that order, `batch_size` at a time."""
        indices = indices.to(self.images.device)
        for begin in range(0, indices.numel(), batch_size):
            batch = indices[begin:begin + batch_size]
            # index_select: a plain gather (advanced indexing is ~20x slower on CPU here).
            yield self.images.index_select(0, batch), self.labels.index_select(0, batch)

    def train_shard(self, rank: int, world_size: int, seed: int, epoch: int) -> torch.Tensor:
        """This worker's indices for a training epoch (see shard_indices)."""
        return shard_indices(len(self), world_size, rank, seed, epoch)

    def eval_shard(self, rank: int, world_size: int) -> torch.Tensor:
        """Every rank-th sample: shards cover the set exactly once (lengths may differ by one)."""
        return torch.arange(rank, len(self), world_size)


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
    for images, labels in batches:
        device = images.device
        if loss_sum is None:
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            correct = torch.zeros((), device=device, dtype=torch.int64)
        x = transform(images, generator)  # uint8 -> float32 (B, 3, H', W')
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
    for images, labels in batches:
        x = transform(images, None)
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
