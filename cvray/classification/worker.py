"""One worker's share of a training run, for any recipe. Plain PyTorch; no Ray.

`WorkerRun` owns the model, optimiser and on-device data of one worker and runs whole epochs;
`fit` drives it in a single process (benchmarks, the GPU script). Ray Train's per-worker
function (cvray.on_ray.training) drives the very same object, so there is one training loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cvray.classification.config import TrainConfig
from cvray.classification.datasets import EpochSource, ImageClassData, InMemorySource, epoch_seed, world
from cvray.classification.engine import all_reduce_sums, evaluate, train_one_epoch, unwrap, uses_channels_last
from cvray.classification.metrics import EpochMetrics, ProgressSums, epoch_row
from cvray.classification.recipes import Recipe
from cvray.errors import CvrayError


class TrainingDiverged(CvrayError):
    """The training loss became NaN or infinite: the run fails instead of training on."""


class WorkerRun:
    """One worker's share of a run. Under torch.distributed, DDP wraps the model."""

    def __init__(
        self, recipe: Recipe, config: TrainConfig, data: ImageClassData | EpochSource, device: torch.device | str,
    ):
        """data: labelled images in host memory (moved to `device` here), or an EpochSource that
        yields this worker's batches (a Ray Data stream)."""
        self.recipe, self.config = recipe, config
        self.device = torch.device(device)
        self.rank, self.world_size = world()
        self.batch_size_per_worker = config.batch_size // self.world_size
        self.classes = list(data.classes)
        torch.manual_seed(config.seed)  # identical init on every rank (DDP also broadcasts it)
        model = recipe.build_model(config, len(self.classes)).to(self.device)
        if uses_channels_last(self.device, config.precision):
            model = model.to(memory_format=torch.channels_last)
        self.optimizer = recipe.build_optimizer(config, model, self.device)
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.model = model
        if isinstance(data, ImageClassData):
            self.data = InMemorySource(data, self.device, config.seed, config.val_share)
        else:
            self.data = data
        self.train_transform = recipe.train_transform(config)
        self.eval_transform = recipe.eval_transform(config)
        self.epoch = 0  # epochs completed
        self.history: list[EpochMetrics] = []

    def run_epoch(self, progress: Callable[[ProgressSums], None] | None = None) -> EpochMetrics:
        """Train one epoch on this worker's shard, evaluate, and return the run's metrics row.

        progress: passed to train_one_epoch (this worker's running sums, about once a minute)."""
        epoch = self.epoch + 1
        start = time.perf_counter()
        cfg = self.config
        batches, num_examples = self.data.train_batches(epoch, self.batch_size_per_worker)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(epoch_seed(cfg.seed, epoch) * 1024 + self.rank)  # augmentation: per rank, per epoch
        train = train_one_epoch(
            self.model, self.optimizer, batches, num_examples, self.train_transform, generator, cfg.precision,
            self.recipe.loss_reduction, progress=progress, progress_every_s=cfg.progress_every_s,
        )
        if not math.isfinite(train["loss_sum"]):  # diverged: fail the run rather than train on
            raise TrainingDiverged(f"the training loss is {train['loss_sum']} in epoch {epoch} (diverged): "
                                   "lower --lr")
        test = evaluate(unwrap(self.model), self.data.test_batches(cfg.eval_batch_size), self.eval_transform,
                        cfg.precision)
        val = evaluate(unwrap(self.model), self.data.val_batches(cfg.eval_batch_size), self.eval_transform,
                       cfg.precision)
        totals = all_reduce_sums(
            {
                "loss_sum": train["loss_sum"], "train_correct": train["correct"],
                "train_examples": train["examples"], "train_seconds": train["seconds"],
                "test_correct": test["correct"], "test_examples": test["examples"],
                "val_correct": val["correct"], "val_examples": val["examples"],
                "epoch_seconds": time.perf_counter() - start,
            },
            self.device, maximum=("train_seconds", "epoch_seconds"),
        )
        row = EpochMetrics(
            epoch=epoch,
            train_loss=totals["loss_sum"] / totals["train_examples"],
            train_acc=totals["train_correct"] / totals["train_examples"],
            test_acc=totals["test_correct"] / max(totals["test_examples"], 1.0),
            val_acc=totals["val_correct"] / totals["val_examples"] if totals["val_examples"] else None,
            examples_per_sec=totals["train_examples"] / totals["train_seconds"],
            train_examples=int(totals["train_examples"]),
            train_seconds=totals["train_seconds"],
            epoch_seconds=totals["epoch_seconds"],
        )
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
            "recipe": self.recipe.name,
            **self.recipe.model_info(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = [epoch_row(r) for r in state["history"] if r["epoch"] <= self.epoch]


def fit(
    recipe: Recipe, config: TrainConfig, data: ImageClassData, device: torch.device | str,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> WorkerRun:
    """Train for config.epochs in this process; call on_epoch(row) after each epoch."""
    run = WorkerRun(recipe, config, data, torch.device(device))
    while run.epoch < config.epochs:
        row = run.run_epoch()
        if on_epoch is not None:
            on_epoch(row)
    return run
