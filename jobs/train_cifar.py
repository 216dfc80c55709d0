"""Train the lab's ResNet-18 on CIFAR-10 with image augmentation, on Ray Train.

    python jobs/train_cifar.py --smoke-test                 # minutes on a laptop CPU
    python jobs/train_cifar.py --data-dir DIR               # the lab's recipe: 10 epochs, batch 256
    ray job submit --working-dir . -- python jobs/train_cifar.py --data-dir s3://bucket/cifar10

Rerunning the same command resumes the run from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys

import _common
from cvray.config import AUG_PRESETS, PRECISIONS, CifarTrainConfig

SMOKE_TRAIN_SAMPLES = 512
SMOKE_TEST_SAMPLES = 256
SMOKE_EPOCHS = 2


def aug_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in AUG_PRESETS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown augmentation {', '.join(bad) or text!r}; choose from {', '.join(AUG_PRESETS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    d = CifarTrainConfig()
    p = _common.make_parser(__doc__.split("\n\n")[0])
    where = p.add_argument_group("where it runs (may change when resuming)")
    where.add_argument("--address", default=None, help="Ray cluster: HOST:PORT, ray://HOST:PORT or auto (default: $RAY_ADDRESS, else a local Ray started by this job)")
    where.add_argument("--num-workers", type=_common.positive_int, default=None, help="Ray Train workers (default: one per GPU on a GPU cluster, else 1)")
    gpu = where.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="use_gpu", action="store_true", default=None, help="train on GPUs (error if the cluster has none; default: GPUs when the cluster has them)")
    gpu.add_argument("--no-gpu", dest="use_gpu", action="store_false", help="train on CPUs even if the cluster has GPUs")
    where.add_argument("--cpus-per-worker", type=_common.positive_float, default=None, help="CPUs per worker; sets torch's thread count (default: the cluster's CPUs / workers on CPU, up to 4 per GPU worker)")
    where.add_argument("--data-dir", default=d.data_dir, help="CIFAR-10: cifar-10-batches-py/, train.parquet+test.parquet, or train/<class>/ + test/<class>/ folders; local or s3://...; downloaded here when empty")
    where.add_argument("--storage-path", default=d.storage_path, help="parent folder of run folders (shared storage or s3://... on multi-node clusters)")
    where.add_argument("--name", default=None, help="run folder name (default: derived from the hyperparameters, e.g. cifar10-resnet18-flip-bs256-lr0.001-bf16-s0)")
    where.add_argument("--fresh", action="store_true", help="delete the run folder of this name and start over")
    where.add_argument("--max-failures", type=_common.non_negative_int, default=d.max_failures, help="restarts of the worker group from the latest checkpoint before giving up")
    where.add_argument("--verbose", action="store_true", help="also show Ray Train's own INFO logs (worker group start, checkpoints, restart decisions)")
    where.add_argument("--epochs", type=_common.positive_int, default=None, help=f"total epochs (default {d.epochs}; {SMOKE_EPOCHS} with --smoke-test); a larger value on a finished run trains on")

    hyper = p.add_argument_group("hyperparameters (fixed for the life of a run)")
    hyper.add_argument("--batch-size", type=_common.positive_int, default=d.batch_size, help="global batch; each worker takes batch-size / num-workers")
    hyper.add_argument("--lr", type=_common.positive_float, default=d.lr, help="Adam learning rate")
    hyper.add_argument("--aug", type=aug_list, default=d.aug, help=f"comma-separated training augmentations, drawn per sample: {', '.join(AUG_PRESETS)} (all = flip + color + crop)")
    hyper.add_argument("--precision", choices=PRECISIONS, default=d.precision, help="bf16: bf16 autocast + channels_last on CUDA (CPU runs fp32); fp32: the lab's numerics")
    hyper.add_argument("--seed", type=int, default=d.seed, help="model init and per-epoch shuffles")
    hyper.add_argument("--train-samples", type=_common.positive_int, default=None, help="use the first N training images (default: all)")
    hyper.add_argument("--test-samples", type=_common.positive_int, default=None, help="use the first N test images (default: all)")
    hyper.add_argument("--smoke-test", action="store_true", help=f"the real training path on {SMOKE_TRAIN_SAMPLES} train / {SMOKE_TEST_SAMPLES} test images for {SMOKE_EPOCHS} epochs")
    return p


def config_from_args(args: argparse.Namespace) -> CifarTrainConfig:
    train_samples, test_samples, epochs = args.train_samples, args.test_samples, args.epochs
    if args.smoke_test:
        train_samples = train_samples or SMOKE_TRAIN_SAMPLES
        test_samples = test_samples or SMOKE_TEST_SAMPLES
        epochs = epochs or SMOKE_EPOCHS
    return CifarTrainConfig(
        batch_size=args.batch_size, lr=args.lr, aug=tuple(args.aug), precision=args.precision, seed=args.seed,
        train_samples=train_samples, test_samples=test_samples, epochs=epochs or CifarTrainConfig.epochs,
        num_workers=args.num_workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
        data_dir=args.data_dir, storage_path=args.storage_path, name=args.name, max_failures=args.max_failures,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    from cvray import plots as report
    from cvray.on_ray.training import TrainingFailed, run_training

    try:
        summary = run_training(config, address=args.address, fresh=args.fresh, verbose=args.verbose)
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"run folder: {summary['run_dir']}")
    print(report.lab_lines(summary, summary["devices"]))
    return 0


if __name__ == "__main__":
    sys.exit(_common.run(main))
