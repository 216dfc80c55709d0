"""Training engine for image classification: plain PyTorch, knows nothing of Ray.

The data path keeps the whole uint8 dataset on the device and builds each batch with tensor
ops (index, augment, convert), so there is no per-sample Python and no DataLoader. Works in one
process or under torch.distributed (one process per worker, e.g. started by Ray Train): each
worker trains on a disjoint shard of a shared per-epoch permutation and metrics are all-reduced.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

Augment = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_indices(num_samples: int, num_shards: int, shard: int, seed: int, epoch: int) -> torch.Tensor:
    """This shard's sample indices for one epoch: a block of a permutation every shard draws alike.

    Shards are disjoint and equally long (the < num_shards leftover samples sit out this epoch,
    different ones each epoch), so every worker runs the same number of steps, as DDP needs.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
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
class DeviceDataset:
    """A labelled image set held on the training device as uint8: images (N, 3, H, W), labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def to_device(cls, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> "DeviceDataset":
        return cls(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DeviceDataset,
    indices: torch.Tensor,
    batch_size: int,
    augment: Augment,
    generator: torch.Generator | None,
    precision: str = "fp32",
    progress: Callable[[dict[str, float]], None] | None = None,
    progress_every_s: float = 60.0,
) -> dict[str, float]:
    """One pass over `indices` (this worker's shard) in batches of `batch_size`.

    progress: called with the running sums {"loss_sum", "correct", "examples", "total",
    "seconds"} after a step once `progress_every_s` seconds have passed since the last call (for
    CPU epochs that take minutes; the device is synchronised only then).

    Returns this worker's sums: {"loss_sum", "correct", "examples", "seconds"}. Backward runs on
    the mean cross-entropy per sample; the lab sums instead, which cvray.classification.worker.lab_adam
    matches exactly by scaling Adam's epsilon.
    """
    device = data.images.device
    channels_last = uses_channels_last(device, precision)
    indices = indices.to(device)
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    start = last_progress = time.perf_counter()
    for begin in range(0, indices.numel(), batch_size):
        batch = indices[begin:begin + batch_size]
        # index_select: a plain gather (advanced indexing is ~20x slower on CPU here).
        x = augment(data.images.index_select(0, batch), generator)  # uint8 -> float32 (B, 3, H, W) in [0, 1]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = data.labels.index_select(0, batch)
        with autocast(device, precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: a .item() per step would stall the GPU every batch.
        loss_sum += loss.detach().double() * batch.numel()
        correct += (logits.argmax(dim=1) == y).sum()
        if progress is not None and time.perf_counter() - last_progress >= progress_every_s:
            last_progress = time.perf_counter()
            progress({
                "loss_sum": loss_sum.item(), "correct": float(correct.item()), "examples": float(begin + batch.numel()),
                "total": float(indices.numel()), "seconds": last_progress - start,
            })
    totals = {"loss_sum": loss_sum.item(), "correct": float(correct.item()), "examples": float(indices.numel())}
    totals["seconds"] = time.perf_counter() - start  # .item() above synchronised the device
    return totals


@torch.no_grad()
def evaluate(
    model: nn.Module, data: DeviceDataset, indices: torch.Tensor, batch_size: int, precision: str = "fp32"
) -> dict[str, float]:
    """Accuracy sums over `indices`: {"correct", "examples"}. Pass the unwrapped model under DDP
    (DDP's forward is a collective, and shards may differ in length)."""
    device = data.images.device
    channels_last = uses_channels_last(device, precision)
    indices = indices.to(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for begin in range(0, indices.numel(), batch_size):
        batch = indices[begin:begin + batch_size]
        x = data.images.index_select(0, batch).float().div_(255.0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x)
        correct += (logits.argmax(dim=1) == data.labels.index_select(0, batch)).sum()
    model.train(was_training)
    return {"correct": float(correct.item()), "examples": float(indices.numel())}


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
