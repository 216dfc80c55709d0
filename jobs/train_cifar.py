"""Train the lab's ResNet-18 on CIFAR-10 with image augmentation, on Ray Train.

    python jobs/train_cifar.py --smoke-test                 # minutes on a laptop CPU
    python jobs/train_cifar.py --data-dir DIR               # the lab's recipe: 10 epochs, batch 256
    ray job submit --working-dir . -- python jobs/train_cifar.py --data-dir s3://bucket/cifar10
    python jobs/train_cifar.py --num-workers 2-4 --max-failures 3  # elastic: carries on when a node is lost

Rerunning the same command resumes the run from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

import _train_args

import _common
from cvray.classification.config import AUG_PRESETS, CIFAR10_CLASSES, CifarTrainConfig, validate_names
from cvray.errors import ConfigError

SMOKE_TRAIN_SAMPLES = 512
SMOKE_TEST_SAMPLES = 256
SMOKE_EPOCHS = 2


def aug_list(text: str) -> tuple[str, ...]:
    """--aug: comma-separated preset names, checked by the library's own validator."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    try:
        return validate_names(names or (text,))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def class_list(text: str) -> tuple[str, ...]:
    """--classes: two or more distinct CIFAR-10 class names."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CIFAR10_CLASSES]
    if unknown or len(set(names)) < 2 or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected two or more distinct CIFAR-10 classes ({','.join(CIFAR10_CLASSES)}), got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    d = CifarTrainConfig()
    p = _common.make_parser(__doc__.split("\n\n")[0])
    _, hyper = _train_args.add_train_args(
        p, d, lr_help="Adam learning rate",
        data_help="CIFAR-10: cifar-10-batches-py/, train.parquet+test.parquet, or train/<class>/ + test/<class>/ "
                  "folders; local or s3://...; downloaded here when empty",
        smoke_help=f"the real training path on {SMOKE_TRAIN_SAMPLES} train / {SMOKE_TEST_SAMPLES} test images "
                   f"for {SMOKE_EPOCHS} epochs",
    )
    hyper.add_argument("--aug", type=aug_list, default=d.aug,
                       help=f"comma-separated training augmentations, drawn per sample: {', '.join(AUG_PRESETS)} "
                            "(all = flip + color + crop)")
    hyper.add_argument("--classes", type=class_list, default=None, metavar="C,C,...",
                       help="train on these CIFAR-10 classes only, e.g. eight of them to pretrain for "
                            "fine-tuning on the other two (default: all ten)")
    _train_args.add_subset_args(hyper, "the first")
    return p


def config_from_args(args: argparse.Namespace) -> CifarTrainConfig:
    fields = _train_args.train_config_fields(args)
    train_samples, test_samples = args.train_samples, args.test_samples
    if args.smoke_test:
        train_samples = train_samples or SMOKE_TRAIN_SAMPLES
        test_samples = test_samples or SMOKE_TEST_SAMPLES
        fields["epochs"] = fields["epochs"] or SMOKE_EPOCHS
    fields["epochs"] = fields["epochs"] or CifarTrainConfig.epochs
    return CifarTrainConfig(**fields, aug=tuple(args.aug), train_samples=train_samples, test_samples=test_samples,
                            classes=args.classes)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    from cvray.on_ray.connect import check_reachable  # light: before torch and Ray are imported

    check_reachable(args.address or os.environ.get("RAY_ADDRESS"))
    from cvray.classification.recipes import CifarRecipe
    from cvray.console import lab_lines
    from cvray.on_ray.training import TrainingFailed, run_training

    try:
        summary = run_training(CifarRecipe(), config, address=args.address, fresh=args.fresh, verbose=args.verbose)
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"run folder: {summary['run_dir']}")
    print(lab_lines(summary, summary["devices"]))
    return 0


if __name__ == "__main__":
    sys.exit(_common.run(main))
