"""The fine-tuning lab's comparison, offline: fine-tuned from a pretrained model vs trained from
scratch, on two CIFAR-10 classes held out from pretraining. Prints one JSON object.

Where ImageNet weights and hotdog.zip cannot be downloaded (air-gapped clusters, CI), this makes
the lab's point with what is at hand:
1. a labelled folder of two CIFAR-10 classes (default cat vs dog; --per-class train and test
   images each, the Parquet's own JPEG bytes as files: train/<class>/..., test/<class>/...);
2. a CIFAR run pretrained on the other eight classes (`jobs/train_cifar.py --classes ...`);
3. `jobs/finetune.py --compare --init-from` that run: fine-tuned (the lab's SGD, new head at 10x)
   and the same architecture from scratch (10x lr, one group), back to back.
Both accuracies come with their standard errors; fine-tuning should beat scratch by more than two
standard errors of the difference. Every step is the real job command (printed), so the run
folders can be inspected and resumed.

    python benchmarks/finetune_offline.py --cifar-dir ../shared/data/cifar10 --out /tmp/offline \\
        [--held-out cat,dog] [--per-class 500] [--pretrain-samples 8000] [--pretrain-epochs 4] \\
        [--finetune-epochs 5]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from _bootstrap import REPO_ROOT
from cvray.classification.config import CIFAR10_CLASSES


def write_two_class_folder(cifar_dir: str, out: Path, classes: list[str], per_class: int) -> None:
    """train/<class>/NNNNN.jpg and test/<class>/NNNNN.jpg: the first `per_class` images of each."""
    import pyarrow.parquet as pq

    for split in ("train", "test"):
        table = pq.read_table(os.path.join(cifar_dir, f"{split}.parquet"), columns=["image", "label"])
        counts = dict.fromkeys(classes, 0)
        for i, (blob, label) in enumerate(zip(table.column("image").to_pylist(),
                                              table.column("label").to_pylist(), strict=True)):
            name = CIFAR10_CLASSES[label]
            if name in counts and counts[name] < per_class:
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{i:05d}.jpg").write_bytes(blob)
                counts[name] += 1


def run_job(argv: list[str], log: io.TextIOBase) -> float:
    """Run a job script as a user would; its output goes to `log`; returns seconds."""
    command = [sys.executable, *argv]
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)
    start = time.perf_counter()
    env = {**os.environ, "RAY_ADDRESS": ""}  # each job starts its own local Ray
    subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    return time.perf_counter() - start


def standard_error(accuracy: float, n: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar-dir", default=str(REPO_ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--held-out", default="cat,dog")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--pretrain-samples", type=int, default=8000)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--finetune-lr", type=float, default=5e-5,
                        help="the fine-tuned run's lr (the lab's 5e-5); scratch trains at 10x")
    parser.add_argument("--extra", default="", help="flags added to both jobs, e.g. '--no-gpu'")
    args = parser.parse_args()
    out, held_out = Path(args.out), args.held_out.split(",")
    pretrain_classes = [c for c in CIFAR10_CLASSES if c not in held_out]
    folder, runs = out / "two_classes", out / "runs"
    name = f"two-classes-lr{args.finetune_lr:g}"
    if not folder.exists():
        write_two_class_folder(args.cifar_dir, folder, held_out, args.per_class)
    extra = args.extra.split()
    with open(out / "jobs.log", "a") as log:
        pretrain_s = run_job(
            ["jobs/train_cifar.py", "--data-dir", args.cifar_dir, "--classes", ",".join(pretrain_classes),
             "--train-samples", str(args.pretrain_samples), "--test-samples", "2000",
             "--epochs", str(args.pretrain_epochs), "--storage-path", str(runs), "--name", "pretrained", *extra], log)
        finetune_s = run_job(
            ["jobs/finetune.py", "--data-dir", str(folder), "--init-from", str(runs / "pretrained"), "--compare",
             "--epochs", str(args.finetune_epochs), "--lr", str(args.finetune_lr), "--storage-path", str(runs),
             "--name", name, *extra],
            log)
    finetuned = json.loads((runs / name / "summary.json").read_text())
    scratch = json.loads((runs / f"{name}-scratch" / "summary.json").read_text())
    pretrained = json.loads((runs / "pretrained" / "summary.json").read_text())
    n_test = 2 * args.per_class
    se = {k: standard_error(s["test_acc"], n_test) for k, s in (("finetuned", finetuned), ("scratch", scratch))}
    diff = finetuned["test_acc"] - scratch["test_acc"]
    diff_se = math.sqrt(se["finetuned"] ** 2 + se["scratch"] ** 2)
    result = {
        "benchmark": "finetune_offline", "held_out": held_out, "pretrain_classes": pretrain_classes,
        "per_class": args.per_class, "test_images": n_test, "pretrain_samples": args.pretrain_samples,
        "pretrain_epochs": args.pretrain_epochs, "finetune_epochs": args.finetune_epochs,
        "finetune_lr": args.finetune_lr, "scratch_lr": 10 * args.finetune_lr,
        "pretrained_test_acc_8_classes": round(pretrained["test_acc"], 4),
        "finetuned_test_acc": round(finetuned["test_acc"], 4), "scratch_test_acc": round(scratch["test_acc"], 4),
        "finetuned_se": round(se["finetuned"], 4), "scratch_se": round(se["scratch"], 4),
        "difference": round(diff, 4), "difference_se": round(diff_se, 4),
        "beats_scratch_by_2_se": diff > 2 * diff_se,
        "finetuned_train_loss": round(finetuned["train_loss"], 4),
        "scratch_train_loss": round(scratch["train_loss"], 4),
        "pretrain_seconds": round(pretrain_s, 1), "finetune_compare_seconds": round(finetune_s, 1),
        "devices": finetuned["devices"], "cpu": platform.processor() or platform.machine(),
        "comparison": str(runs / f"{name}-vs-scratch"),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
