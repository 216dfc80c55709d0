"""The numbers a training run passes around, as TypedDicts (plain dicts at run time, so they go
through ray.train.report, JSON and Parquet unchanged); their keys are defined here only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict


class TrainSums(TypedDict):
    """One worker's running sums over its training batches of an epoch."""

    loss_sum: float  # sum over samples of the per-sample cross-entropy
    correct: float  # samples whose argmax was the label
    examples: float  # samples seen
    seconds: float  # wall time so far, device synchronised


class ProgressSums(TrainSums):
    """TrainSums inside an epoch, with the worker's epoch length."""

    total: float  # samples this worker trains on this epoch


class EvalSums(TypedDict):
    correct: float
    examples: float


class EpochMetrics(TypedDict):
    """One row of metrics.csv / metrics.parquet: the whole run's numbers for one epoch."""

    epoch: int  # 1-based
    train_loss: float  # mean per-sample cross-entropy over the epoch's training samples
    train_acc: float
    test_acc: float
    val_acc: float | None  # on the share of the training data held out (--val-share); None when none is
    examples_per_sec: float  # training samples / the slowest worker's training seconds
    train_examples: int  # over all workers
    train_seconds: float  # the slowest worker's
    epoch_seconds: float  # training + evaluation, the slowest worker's


METRIC_COLUMNS: tuple[str, ...] = tuple(EpochMetrics.__annotations__)


def epoch_row(values: dict) -> EpochMetrics:
    """An EpochMetrics from a stored row; rows from before a column existed get None there."""
    return EpochMetrics(**{c: values.get(c) for c in METRIC_COLUMNS})


class RunSummary(TypedDict, total=False):
    """summary.json: the lab's closing numbers, and where the run ran."""

    epochs: int
    train_loss: float
    train_acc: float
    test_acc: float
    examples_per_sec: float  # over all epochs
    devices: list[str]
    run_dir: str
    recipe: str
    config: dict


def summarize(history: Sequence[EpochMetrics]) -> RunSummary:
    """The lab's closing numbers: last epoch's loss/accuracies, examples/sec over all epochs."""
    last = max(history, key=lambda r: r["epoch"])
    examples = sum(r["train_examples"] for r in history)
    seconds = sum(r["train_seconds"] for r in history)
    return RunSummary(
        epochs=int(last["epoch"]),
        train_loss=float(last["train_loss"]),
        train_acc=float(last["train_acc"]),
        test_acc=float(last["test_acc"]),
        examples_per_sec=examples / seconds if seconds > 0 else 0.0,
    )
