"""The flags every training job shares (train_cifar, and every later training job), with one
meaning each: where the run goes, how it is placed, and the hyperparameters all recipes have."""

from __future__ import annotations

import argparse

import _common
from cvray.classification.config import TrainConfig
from cvray.config import PRECISIONS


def add_train_args(parser: argparse.ArgumentParser, defaults: TrainConfig, *, data_help: str, lr_help: str,
                   smoke_help: str) -> tuple[argparse._ArgumentGroup, argparse._ArgumentGroup]:
    """Add the shared flags; returns the (where it runs, hyperparameters) groups for job flags."""
    d = defaults
    where = parser.add_argument_group("where it runs (may change when resuming)")
    where.add_argument("--address", default=None,
                       help="Ray cluster: HOST:PORT, ray://HOST:PORT or auto "
                            "(default: $RAY_ADDRESS, else a local Ray started by this job)")
    where.add_argument("--num-workers", type=worker_count, default=None, metavar="N|MIN-MAX",
                       help="Ray Train workers (default: one per GPU on a GPU cluster, else 1); MIN-MAX: "
                            "elastic, as many as the cluster can place, carrying on with the workers left "
                            "when one is lost (with --max-failures); the global batch stays fixed")
    gpu = where.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="use_gpu", action="store_true", default=None,
                     help="train on GPUs (error if the cluster has none; default: GPUs when the cluster has them)")
    gpu.add_argument("--no-gpu", dest="use_gpu", action="store_false",
                     help="train on CPUs even if the cluster has GPUs")
    where.add_argument("--cpus-per-worker", type=_common.positive_float, default=None,
                       help="CPUs per worker; sets torch's thread count "
                            "(default: the cluster's CPUs / workers on CPU, up to 4 per GPU worker)")
    where.add_argument("--data-dir", default=d.data_dir, help=data_help)
    where.add_argument("--storage-path", default=d.storage_path,
                       help="parent folder of run folders (shared storage or s3://... on multi-node clusters)")
    where.add_argument("--name", default=None,
                       help=f"run folder name (default: derived from the hyperparameters, e.g. {d.default_name()})")
    where.add_argument("--fresh", action="store_true", help="delete the run folder of this name and start over")
    where.add_argument("--max-failures", type=_common.non_negative_int, default=d.max_failures,
                       help="restarts of the worker group from the latest checkpoint before giving up")
    where.add_argument("--verbose", action="store_true",
                       help="also show Ray Train's own INFO logs (worker group start, checkpoints, restart decisions)")
    where.add_argument("--epochs", type=_common.positive_int, default=None,
                       help=f"total epochs (default: {d.epochs}, fewer with --smoke-test); "
                            "a larger value on a finished run trains on")
    hyper = parser.add_argument_group("hyperparameters (fixed for the life of a run)")
    hyper.add_argument("--batch-size", type=_common.positive_int, default=d.batch_size,
                       help="global batch; each worker takes batch-size / num-workers")
    hyper.add_argument("--lr", type=_common.positive_float, default=d.lr, help=lr_help)
    hyper.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                       help="bf16: bf16 autocast + channels_last on CUDA (CPU runs fp32); fp32: the lab's numerics")
    hyper.add_argument("--seed", type=int, default=d.seed, help="model init and per-epoch shuffles")
    hyper.add_argument("--val-share", type=float, default=d.val_share,
                       help="hold this share of the training images out as a validation set (the same images "
                            "whatever --seed); its accuracy is reported as val_acc (sweeps select on it)")
    hyper.add_argument("--smoke-test", action="store_true", help=smoke_help)
    return where, hyper


def worker_count(text: str) -> tuple[int | None, int]:
    """--num-workers: N (as (None, N)) or MIN-MAX with 1 <= MIN <= MAX (as (MIN, MAX))."""
    low, sep, high = text.partition("-")
    try:
        counts = (_common.positive_int(low), _common.positive_int(high)) if sep else (None, _common.positive_int(low))
    except (ValueError, argparse.ArgumentTypeError):
        counts = None
    if counts is None or (counts[0] is not None and counts[0] > counts[1]):
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX with 1 <= MIN <= MAX, got {text!r}")
    return counts


def add_subset_args(group: argparse._ArgumentGroup, which: str) -> None:
    """--train-samples / --test-samples: `which` says how the subset is taken (e.g. "the first")."""
    for split in ("train", "test"):
        group.add_argument(f"--{split}-samples", type=_common.positive_int, default=None,
                           help=f"use {which} N {split}ing images (default: all)".replace("testing", "test"))


def train_config_fields(args: argparse.Namespace) -> dict:
    """The TrainConfig fields the shared flags set (epochs stays None when not given)."""
    return {
        "batch_size": args.batch_size, "lr": args.lr, "precision": args.precision, "seed": args.seed,
        "val_share": args.val_share,
        "epochs": args.epochs, "use_gpu": args.use_gpu,
        "min_workers": (args.num_workers or (None, None))[0], "num_workers": (args.num_workers or (None, None))[1],
        "cpus_per_worker": args.cpus_per_worker, "data_dir": args.data_dir, "storage_path": args.storage_path,
        "name": args.name, "max_failures": args.max_failures,
    }
