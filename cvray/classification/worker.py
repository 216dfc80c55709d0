"""CIFAR-10 augmentation training (the lab's recipe) as plain PyTorch.

`CifarRun` owns model, optimiser and on-device data for one worker and runs whole epochs;
`fit` drives it in a single process (benchmarks, the GPU script). Ray Train's per-worker
function (cvray/train.py) drives the very same object, so there is one training loop.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from cvray.classification.augment import BatchAugment
from cvray.config import CifarTrainConfig
from cvray.classification.engine import DeviceDataset, all_reduce_sums, evaluate, shard_indices, train_one_epoch, unwrap, world
from cvray.classification.models import d2l_resnet18


LAB_ADAM_EPS = 1e-8  # torch's default, which the lab's Adam uses


def lab_adam(parameters, lr: float, batch_size: int, fused: bool | None = None) -> torch.optim.Adam:
    """The lab's Adam for a loop that averages the loss over the global batch of `batch_size`.

    The lab sums per-sample losses before backward (d2l's train_batch_ch13), so its gradients
    are batch_size times ours. Adam ignores that factor except through eps (Adam with eps on
    c * g takes the same steps as Adam with eps / c on g), so eps / batch_size reproduces the
    lab's updates exactly on full batches (tests/test_engine.py). With eps itself, parameters
    whose gradients are ~1e-8 or smaller would move differently.
    """
    return torch.optim.Adam(parameters, lr=lr, eps=LAB_ADAM_EPS / batch_size, fused=fused)


class CifarRun:
    """One worker's share of a CIFAR training run. Under torch.distributed, DDP wraps the model."""

    def __init__(self, config: CifarTrainConfig, arrays, device: torch.device):
        self.config = config
        self.device = torch.device(device)
        self.rank, self.world_size = world()
        self.batch_size_per_worker = config.batch_size // self.world_size
        self.classes = list(arrays.classes)
        torch.manual_seed(config.seed)  # identical init on every rank (DDP also broadcasts it)
        model = d2l_resnet18(num_classes=len(self.classes)).to(self.device)
        if self.device.type == "cuda" and config.precision == "bf16":
            model = model.to(memory_format=torch.channels_last)
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.model = model
        # fused Adam: one kernel for all parameters on CUDA; the foreach default elsewhere.
        fused = True if self.device.type == "cuda" else None
        self.optimizer = lab_adam(model.parameters(), config.lr, config.batch_size, fused=fused)
        self.train_data = DeviceDataset.to_device(arrays.train_images, arrays.train_labels, self.device)
        self.test_data = DeviceDataset.to_device(arrays.test_images, arrays.test_labels, self.device)
        self.augment = BatchAugment(config.aug)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []

    def run_epoch(self, progress: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Train one epoch on this worker's shard, evaluate, and return the global metrics row.

        progress: passed to train_one_epoch (this worker's running sums, about once a minute)."""
        epoch = self.epoch + 1
        start = time.perf_counter()
        cfg = self.config
        indices = shard_indices(len(self.train_data), self.world_size, self.rank, cfg.seed, epoch)
        generator = torch.Generator(device=self.device)
        generator.manual_seed((cfg.seed * 1_000_003 + epoch) * 1024 + self.rank)  # per rank, per epoch
        train = train_one_epoch(
            self.model, self.optimizer, self.train_data, indices, self.batch_size_per_worker,
            self.augment, generator, cfg.precision, progress=progress,
        )
        test_indices = torch.arange(self.rank, len(self.test_data), self.world_size)
        test = evaluate(unwrap(self.model), self.test_data, test_indices, cfg.eval_batch_size, cfg.precision)
        totals = all_reduce_sums(
            {
                "loss_sum": train["loss_sum"], "train_correct": train["correct"],
                "train_examples": train["examples"], "train_seconds": train["seconds"],
                "test_correct": test["correct"], "test_examples": test["examples"],
                "epoch_seconds": time.perf_counter() - start,
            },
            self.device, maximum=("train_seconds", "epoch_seconds"),
        )
        row = {
            "epoch": epoch,
            "train_loss": totals["loss_sum"] / totals["train_examples"],
            "train_acc": totals["train_correct"] / totals["train_examples"],
            "test_acc": totals["test_correct"] / max(totals["test_examples"], 1.0),
            "examples_per_sec": totals["train_examples"] / totals["train_seconds"],
            "train_examples": int(totals["train_examples"]),
            "train_seconds": totals["train_seconds"],
            "epoch_seconds": totals["epoch_seconds"],
        }
        self.epoch = epoch
        self.history = [r for r in self.history if r["epoch"] < epoch] + [row]
        return row

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs; plain tensors and Python types (weights_only-loadable)."""
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "history": list(self.history),
            "config": self.config.to_dict(),
            "classes": self.classes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = [dict(r) for r in state["history"] if r["epoch"] <= self.epoch]


def fit(
    config: CifarTrainConfig, arrays, device: torch.device | str,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> CifarRun:
    """Train for config.epochs in this process; call on_epoch(row) after each epoch."""
    run = CifarRun(config, arrays, torch.device(device))
    while run.epoch < config.epochs:
        row = run.run_epoch()
        if on_epoch is not None:
            on_epoch(row)
    return run


def summarize(history: list[dict[str, Any]]) -> dict[str, float]:
    """The lab's closing numbers: last epoch's loss/accuracies, examples/sec over all epochs."""
    last = history[-1]
    examples = sum(r["train_examples"] for r in history)
    seconds = sum(r["train_seconds"] for r in history)
    return {
        "epochs": int(last["epoch"]),
        "train_loss": float(last["train_loss"]),
        "train_acc": float(last["train_acc"]),
        "test_acc": float(last["test_acc"]),
        "examples_per_sec": examples / seconds if seconds > 0 else 0.0,
    }
