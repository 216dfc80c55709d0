"""Ray Tune overhead: N identical tiny CIFAR trials through `jobs/sweep_train.py` vs the same N runs
through `jobs/train_cifar.py`, one after the other, side by side in one run. Prints ONE JSON object.

Both sides run as a user would: one command per side for the sweep (one Ray start, N trials of
one TorchTrainer each), N commands for the plain job (a Ray start each). Every trial/run trains
the same config (`--param lr=V --num-samples N`: a one-value grid repeated N times) on a
generated CIFAR-format Parquet of --train images, one epoch, batch 32, validation share 0.1.

    python benchmarks/tune_overhead.py [--trials 4] [--train 256] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from _bootstrap import REPO_ROOT


def write_cifar(folder: Path, n_train: int, n_test: int) -> None:
    """CIFAR-format Parquet whose class tints the image (learnable; the content does not matter here)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (10, 3))
    for name, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n)
        blobs = []
        for label in labels:
            pixels = (0.6 * palette[label] + 0.4 * rng.integers(0, 256, (32, 32, 3))).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG")
            blobs.append(buffer.getvalue())
        pq.write_table(pa.table({"image": blobs, "label": labels.astype(np.int64)}), folder / f"{name}.parquet")


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--train", type=int, default=256, help="training images")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (sweep, plain runs)")
    args = parser.parse_args()
    common = ["--epochs", "1", "--batch-size", "32", "--val-share", "0.1", "--precision", "fp32"]
    sweep_s, plain_s = [], []
    with tempfile.TemporaryDirectory(prefix="tune_overhead_") as tmp:
        root = Path(tmp)
        write_cifar(root, args.train, 64)
        for r in range(args.rounds):
            sweep_s.append(timed([
                "jobs/sweep_train.py", "--job", "cifar", "--data-dir", str(root), *common,
                "--param", "lr=0.001", "--num-samples", str(args.trials), "--no-early-stop",
                "--storage-path", str(root / f"sweeps{r}"), "--name", "s"]))
            plain_s.append(sum(timed([
                "jobs/train_cifar.py", "--data-dir", str(root), *common, "--lr", "0.001",
                "--storage-path", str(root / f"plain{r}"), "--name", f"run{i}"]) for i in range(args.trials)))
    sweep, plain = min(sweep_s), min(plain_s)
    print(json.dumps({
        "benchmark": "tune_overhead", "trials": args.trials, "train_images": args.train, "epochs": 1,
        "batch_size": 32, "rounds": args.rounds,
        "sweep_seconds": [round(s, 1) for s in sweep_s], "plain_seconds": [round(s, 1) for s in plain_s],
        "sweep_over_plain": round(sweep / plain, 3),
        "sweep_trials_per_minute": round(60 * args.trials / sweep, 2),
        "plain_runs_per_minute": round(60 * args.trials / plain, 2),
        "note": "both include Ray start-up: once for the sweep, once per plain run",
        "cpu_count": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
