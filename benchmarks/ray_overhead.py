"""Ray Train overhead on CPU: the same training step run by TorchTrainer (1 worker) vs directly.

Same model (d2l ResNet-18), data (synthetic CIFAR-shaped uint8 on the device), batch, flip
augmentation and torch thread count on both sides; rounds alternate direct / Ray so machine drift
hits both. The direct side runs in a fresh process that never imports Ray (a driver that has
called ray.init carries Ray's own threads). Steady-state examples/sec excludes a warm-up pass;
Ray's fixed start-up (fit() call to the worker's first step, and fit() end to end) is reported
separately.

    python benchmarks/ray_overhead.py [--batch-size 64] [--steps 8] [--rounds 2] [--cpus 2]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from _bootstrap import REPO_ROOT
from cvray.classification.augment import BatchAugment
from cvray.classification.datasets import DeviceDataset
from cvray.classification.engine import train_one_epoch
from cvray.classification.models import d2l_resnet18


def measure(settings: dict) -> dict:
    """Warm up one pass, then time `steps` training steps; returns examples/sec and timestamps."""
    first_step_at = time.time()
    torch.set_num_threads(settings["threads"])
    torch.manual_seed(0)
    n = settings["batch_size"] * settings["steps"]
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    data = DeviceDataset(images, labels)
    model = d2l_resnet18()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    augment = BatchAugment(("flip",))
    generator = torch.Generator().manual_seed(0)
    warm = torch.arange(settings["batch_size"] * 2)
    batch = settings["batch_size"]
    train_one_epoch(model, optimizer, data.batches(warm, batch), len(warm), augment, generator)
    out = train_one_epoch(model, optimizer, data.batches(torch.arange(n), batch), n, augment, generator)
    return {
        "examples_per_sec": out["examples"] / out["seconds"],
        "first_step_at": first_step_at,
        "threads": torch.get_num_threads(),
    }


def train_fn_per_worker(settings: dict) -> None:
    import tempfile

    import ray.train

    metrics = measure(settings)
    # Result.metrics is only kept for reports that carry a checkpoint: attach a tiny one.
    with tempfile.TemporaryDirectory() as folder:
        open(os.path.join(folder, "done"), "w").close()
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def run_ray(settings: dict, cpus: int) -> dict:
    import tempfile

    import ray.train
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            train_fn_per_worker,
            train_loop_config=settings,
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
            run_config=ray.train.RunConfig(storage_path=storage, name=f"overhead-{time.time_ns()}"),
        )
        start = time.time()
        captured = trainer.fit().metrics
        total = time.time() - start
    return {**captured, "startup_seconds": captured["first_step_at"] - start, "fit_seconds": total}


def measure_direct(settings: dict) -> dict:
    """measure() in a fresh Python process without Ray."""
    import subprocess

    code = (
        f"import json, sys; sys.path[:0] = {[str(REPO_ROOT)]!r}; from benchmarks.ray_overhead import measure; "
        f"print(json.dumps(measure({settings!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2,
                        help="CPUs for the Ray worker = torch threads on both sides")
    args = parser.parse_args(argv)
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    settings = {"batch_size": args.batch_size, "steps": args.steps, "threads": args.cpus}
    direct, via_ray = [], []
    try:
        for _ in range(args.rounds):
            direct.append(measure_direct(settings))
            via_ray.append(run_ray(settings, args.cpus))
    finally:
        ray.shutdown()
    direct_eps = statistics.median(r["examples_per_sec"] for r in direct)
    ray_eps = statistics.median(r["examples_per_sec"] for r in via_ray)
    result = {
        "benchmark": "ray_overhead",
        "model": "d2l_resnet18", "batch_size": args.batch_size, "timed_steps": args.steps,
        "rounds": args.rounds, "torch_threads": args.cpus, "ray_worker_cpus": args.cpus,
        "ray_worker_threads": [r["threads"] for r in via_ray],
        "direct_examples_per_sec": [round(r["examples_per_sec"], 2) for r in direct],
        "ray_examples_per_sec": [round(r["examples_per_sec"], 2) for r in via_ray],
        "ratio_ray_over_direct": round(ray_eps / direct_eps, 3),
        "ray_startup_seconds": [round(r["startup_seconds"], 2) for r in via_ray],
        "ray_fit_seconds": [round(r["fit_seconds"], 2) for r in via_ray],
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
