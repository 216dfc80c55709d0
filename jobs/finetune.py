"""Fine-tune a pretrained ResNet on a labelled image folder (the d2l hot-dog lab), on Ray Train.

    python jobs/finetune.py --smoke-test                        # hotdog.zip, a few images, minutes
    python jobs/finetune.py --data-dir DIR                      # the lab's recipe: ImageNet ResNet-18
    python jobs/finetune.py --data-dir DIR --compare            # fine-tuned vs from scratch, one table
    python jobs/finetune.py --data-dir DIR --init-from RUN      # start from an earlier cvray run
    ray job submit --working-dir . -- python jobs/finetune.py --data-dir s3://bucket/hotdog

DIR holds train/<class>/... and test/<class>/... (files at any depth). Rerunning the same command
resumes the run from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

import _train_args

import _common
from cvray.classification.config import DATA_PATHS, FinetuneConfig
from cvray.classification.models import ARCHS
from cvray.errors import ConfigError

SMOKE_TRAIN_SAMPLES = 128
SMOKE_TEST_SAMPLES = 64
SMOKE_EPOCHS = 2
SMOKE_CROP = 64
SCRATCH_LR_MULT = 10.0
"""The lab's scratch baseline trains at 10x the fine-tuning lr (5e-4 vs 5e-5)."""


def build_parser() -> argparse.ArgumentParser:
    d = FinetuneConfig()
    p = _common.make_parser(__doc__.split("\n\n")[0])
    where, hyper = _train_args.add_train_args(
        p, d, lr_help=f"SGD learning rate of the pretrained body (default: {d.lr:g}; "
                      f"{d.lr * SCRATCH_LR_MULT:g} with --scratch)",
        data_help="train/<class>/... and test/<class>/... folders, local or s3://...; the default folder "
                  "gets d2l's hotdog.zip when empty",
        smoke_help=f"the real path on {SMOKE_TRAIN_SAMPLES} train / {SMOKE_TEST_SAMPLES} test images at "
                   f"{SMOKE_CROP} px for {SMOKE_EPOCHS} epochs",
    )
    p.set_defaults(lr=None)
    start = hyper.add_mutually_exclusive_group()
    start.add_argument("--weights", default=None, metavar="PATH",
                       help="a state dict (torchvision layout) to start from, local or URI "
                            "(default: torchvision's ImageNet weights, downloaded once)")
    start.add_argument("--init-from", default=None, metavar="RUN",
                       help="start from an earlier cvray run (its folder or model.pt); its architecture "
                            "and input normalisation are used and its head is replaced")
    start.add_argument("--scratch", action="store_true",
                       help="the lab's baseline: the architecture from its default init, one parameter group")
    hyper.add_argument("--compare", action="store_true",
                       help=f"run fine-tuned and from scratch (at {SCRATCH_LR_MULT:g}x lr) back to back, then "
                            "write one table and one picture of both")
    hyper.add_argument("--arch", choices=tuple(ARCHS), default=None,
                       help="default: resnet18 (the lab), or the --init-from run's")
    hyper.add_argument("--head-lr-mult", type=_common.positive_float, default=d.head_lr_mult,
                       help="the new output layer's lr / --lr")
    hyper.add_argument("--weight-decay", type=_common.non_negative_float, default=d.weight_decay,
                       help="SGD weight decay")
    hyper.add_argument("--crop-size", type=_common.positive_int, default=None,
                       help="training crop and test centre crop in px (default: the architecture's input "
                            "size: 224, or 32 for d2l_resnet18)")
    hyper.add_argument("--decode-size", type=_common.positive_int, default=None,
                       help="decode every image once with its shorter side at this size "
                            "(default: round(crop * 288 / 224), 288 for 224 crops; docs/finetune.md measures it)")
    _train_args.add_subset_args(hyper, "a fixed subset of")
    where.add_argument("--max-bad-share", type=_common.non_negative_float, default=d.max_bad_share,
                       help="unreadable files are skipped and listed; more than this share of a split is an error")
    where.add_argument("--data-path", choices=DATA_PATHS, default=d.data_path,
                       help="memory: each worker holds the decoded images; stream: Ray Data decodes them "
                            "on the cluster every epoch; auto: memory when they fit --memory-budget-gb")
    where.add_argument("--memory-budget-gb", type=_common.positive_float, default=d.memory_budget_gb,
                       help="decoded images a worker may hold for the memory path")
    return p


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    if args.compare and args.scratch:
        raise ConfigError("--compare already trains a from-scratch run next to the fine-tuned one: drop --scratch")
    fields = _train_args.train_config_fields(args)
    train_samples, test_samples, crop = args.train_samples, args.test_samples, args.crop_size
    if args.smoke_test:
        train_samples = train_samples or SMOKE_TRAIN_SAMPLES
        test_samples = test_samples or SMOKE_TEST_SAMPLES
        fields["epochs"] = fields["epochs"] or SMOKE_EPOCHS
        crop = crop or SMOKE_CROP
    fields["epochs"] = fields["epochs"] or FinetuneConfig.epochs
    fields["lr"] = fields["lr"] or FinetuneConfig.lr * (SCRATCH_LR_MULT if args.scratch else 1.0)
    return FinetuneConfig(
        **fields, arch=args.arch, weights=args.weights, init_from=args.init_from, scratch=args.scratch,
        head_lr_mult=args.head_lr_mult, weight_decay=args.weight_decay, crop_size=crop,
        decode_size=args.decode_size, train_samples=train_samples, test_samples=test_samples,
        max_bad_share=args.max_bad_share, data_path=args.data_path, memory_budget_gb=args.memory_budget_gb,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    from cvray.on_ray.connect import check_reachable  # light: before torch and Ray are imported

    check_reachable(args.address or os.environ.get("RAY_ADDRESS"))
    from cvray.classification.finetune import FinetuneRecipe
    from cvray.console import lab_lines
    from cvray.on_ray.training import TrainingFailed, run_training

    def train(run_config: FinetuneConfig) -> dict:
        summary = run_training(FinetuneRecipe(), run_config, address=args.address, fresh=args.fresh,
                               verbose=args.verbose)
        print(f"run folder: {summary['run_dir']}")
        print(lab_lines(summary, summary["devices"]))
        return summary

    try:
        if not args.compare:
            train(config)
            return 0
        return compare(config, train)
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def compare(config: FinetuneConfig, train) -> int:
    """Fine-tuned, then from scratch at SCRATCH_LR_MULT x lr; a table and a picture of both."""
    from cvray import storage
    from cvray.classification import compare as comparison

    finetuned = train(config)
    used = finetuned["config"]  # the same architecture and input pipeline, from the default init
    scratch = config.replace(scratch=True, init_from=None, weights=None, lr=config.lr * SCRATCH_LR_MULT,
                             name=f"{config.name}-scratch" if config.name else None, arch=used["arch"],
                             crop_size=used["crop_size"], decode_size=used["decode_size"],
                             normalization=used["normalization"])
    from_scratch = train(scratch)
    base = os.path.basename(finetuned["run_dir"].rstrip("/"))
    folder = storage.join(os.path.dirname(finetuned["run_dir"].rstrip("/")), f"{base}-vs-scratch")
    summary = comparison.write_comparison(folder, {"fine-tuned": finetuned["run_dir"],
                                                   "scratch": from_scratch["run_dir"]})
    print("\n".join(comparison.table_lines(summary)))
    print(f"comparison: {folder} (compare.csv, compare.png)")
    return 0


if __name__ == "__main__":
    sys.exit(_common.run(main))
