"""Training engine for image classification: plain PyTorch, knows nothing of Ray.

One epoch of training (train_one_epoch) and one pass of evaluation (evaluate) over batches from
any source (cvray.classification.datasets), with metrics summed on the device and all-reduced
under torch.distributed (one process per worker, e.g. started by Ray Train).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cvray.classification.datasets import Batch, ImageBatch, world
from cvray.classification.metrics import EvalSums, ProgressSums, TrainSums

LOSS_REDUCTIONS = ("mean", "sum")


class BatchTransform(Protocol):
    """uint8 images (an ImageBatch) -> float32 model input (B, 3, H', W'), on their device."""

    def __call__(self, images: ImageBatch, generator: torch.Generator | None = None) -> torch.Tensor: ...


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked; fp32 otherwise (CPU bf16 is slower than fp32 here)."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_channels_last(device: torch.device, precision: str) -> bool:
    return device.type == "cuda" and precision == "bf16"


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
        device = labels.device
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
        if uses_channels_last(labels.device, precision):
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(labels.device, precision):
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
