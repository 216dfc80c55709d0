"""CIFAR-10 training on one GPU, plain PyTorch (no Ray on the device machine).

1. Training-step throughput of the d2l ResNet-18 (examples/sec, flip augmentation on the device)
   at global batch 256 and larger, bf16 autocast + channels_last vs fp32, eager (and compiled if
   time allows).
2. The lab's recipe (Adam 1e-3, batch 256, 10 epochs, flip) on the CIFAR-10 Parquet: test accuracy
   and examples/sec, i.e. what `jobs/train_cifar.py` does on one GPU worker. A recipe with
   WORKERS > 1 runs that many DDP processes (gloo) on the one device, i.e. what the job does with
   `--num-workers WORKERS`: at 2, each worker's BatchNorm sees 128 samples, as on the lab's two
   DataParallel GPUs (DDP keeps rank 0's running statistics, as DataParallel keeps replica 0's).

    python benchmarks/gpu_cifar.py --data-dir .devdata/cifar10 --out DIR [--tiny]

--tiny runs a few steps on a few hundred images (to test the script on a CPU). Prints and writes
one JSON object (DIR/gpu_cifar.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from cvray.classification.augment import BatchAugment
from cvray.classification.config import CifarTrainConfig
from cvray.classification.datasets import DeviceDataset, world
from cvray.classification.engine import train_one_epoch
from cvray.classification.metrics import summarize
from cvray.classification.models import d2l_resnet18
from cvray.classification.recipes import CifarRecipe
from cvray.classification.worker import fit
from cvray.console import lab_lines
from cvray.net import free_port


def step_throughput(device, batch_size: int, precision: str, steps: int, compile_model: bool = False) -> dict:
    """Examples/sec of the training step (index + flip + forward + backward + Adam) after warm-up."""
    torch.manual_seed(0)
    n = batch_size * steps
    data = DeviceDataset(
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device),
        torch.randint(0, 10, (n,), device=device),
    )
    model = d2l_resnet18().to(device)
    if precision == "bf16" and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda" or None)
    start = time.perf_counter()
    if compile_model:
        model = torch.compile(model)
    augment = BatchAugment(("flip",))
    generator = torch.Generator(device=device).manual_seed(0)
    warm = torch.arange(batch_size * 3, device=device) % n
    train_one_epoch(model, optimizer, data.batches(warm, batch_size), len(warm), augment, generator, precision)
    warmup_seconds = time.perf_counter() - start
    everything = torch.arange(n, device=device)
    out = train_one_epoch(model, optimizer, data.batches(everything, batch_size), n, augment, generator, precision)
    return {
        "batch_size": batch_size, "precision": precision, "compiled": compile_model, "steps": steps,
        "examples_per_sec": round(out["examples"] / out["seconds"], 1),
        "warmup_seconds": round(warmup_seconds, 2),
    }


def lab_recipe(
    device, data_dir: str, epochs: int, precision: str, tiny: bool, seed: int = 0, data: str = "jpeg"
) -> dict:
    """data: "jpeg" trains and tests on the Parquet as it is; "rejpeg" on both splits after a
    second, grid-shifted JPEG pass (benchmarks/jpeg_effect.py): the accuracy that pass costs
    estimates what the Parquet's own JPEG compression costs against the lossless originals."""
    from cvray.classification.cifar import load_cifar10

    config = CifarTrainConfig(
        epochs=epochs, precision=precision, data_dir=data_dir, seed=seed,
        train_samples=512 if tiny else None, test_samples=256 if tiny else None,
    )
    start = time.perf_counter()
    arrays = load_cifar10(data_dir, download=False, train_samples=config.train_samples,
                          test_samples=config.test_samples)
    if data == "rejpeg":
        from benchmarks.jpeg_effect import rejpeg_images

        for split in ("train", "test"):
            images = getattr(arrays, f"{split}_images")
            setattr(arrays, f"{split}_images", torch.from_numpy(rejpeg_images(images.numpy())))
    elif data != "jpeg":
        raise ValueError(f"data must be jpeg or rejpeg, got {data!r}")
    load_seconds = time.perf_counter() - start
    rank, world_size = world()
    rows = []

    def on_epoch(row: dict) -> None:
        rows.append(row)
        if rank == 0:
            print(json.dumps(row), flush=True)

    run = fit(CifarRecipe(), config, arrays, device, on_epoch=on_epoch)
    summary = summarize(run.history)
    return {
        "recipe": "lab: d2l ResNet-18, Adam 1e-3, batch 256, flip", "epochs": epochs, "precision": precision,
        "seed": seed, "data": data,
        "workers": world_size, "batch_size_per_worker": config.batch_size // world_size,
        "train_images": len(arrays.train_labels), "test_images": len(arrays.test_labels),
        "data_load_seconds": round(load_seconds, 2), **{k: round(v, 4) for k, v in summary.items()},
        "epoch_rows": rows,
        "lab_line": lab_lines(summary, [str(device)]).splitlines()[0],
    }


def _recipe_worker(rank: int, world_size: int, port: int, device_name: str, args: tuple, results) -> None:
    """One DDP process of a multi-worker recipe; rank 0 sends the result back."""
    if device_name == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        # Every rank on the same device: NCCL refuses two ranks on one GPU, gloo does not.
        device = torch.device(device_name, 0) if device_name == "cuda" else torch.device(device_name)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        result = lab_recipe(device, *args)
        if rank == 0:
            results.put(result)
    finally:
        dist.destroy_process_group()


def lab_recipe_workers(device, workers: int, args: tuple, timeout_s: float) -> dict:
    """lab_recipe run by `workers` DDP processes sharing `device` (torch.distributed over gloo)."""
    port = free_port()  # for the rendezvous on 127.0.0.1
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    procs = [
        context.Process(target=_recipe_worker, args=(rank, workers, port, device.type, args, results))
        for rank in range(workers)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    if any(p.exitcode != 0 for p in procs) or results.empty():
        raise RuntimeError(f"{workers}-worker recipe failed: exit codes {[p.exitcode for p in procs]}")
    return results.get()


def parse_recipe(spec: str) -> tuple[str, int, int, str]:
    """"PRECISION:SEED[:WORKERS[:DATA]]" -> (precision, seed, workers, data); WORKERS 1, DATA jpeg."""
    parts = spec.split(":")
    if not 2 <= len(parts) <= 4:
        raise SystemExit(f"--recipes: {spec!r} is not PRECISION:SEED[:WORKERS[:DATA]]")
    precision, seed, workers, data = parts + ["1", "jpeg"][len(parts) - 2:]
    if precision not in ("bf16", "fp32") or data not in ("jpeg", "rejpeg") or not (seed + workers).isdigit():
        raise SystemExit(f"--recipes: {spec!r}: PRECISION bf16|fp32, SEED and WORKERS integers, DATA jpeg|rejpeg")
    return precision, int(seed), int(workers), data


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=".devdata/cifar10")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--tiny", action="store_true", help="a few steps on a few hundred images (CPU check)")
    parser.add_argument("--max-seconds", type=float, default=240, help="skip remaining parts past this budget")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--recipes", default="bf16:0",
        help="lab-recipe runs as PRECISION:SEED[:WORKERS[:DATA]],... (e.g. bf16:0,fp32:0,bf16:0:2,"
        "bf16:0:1:rejpeg); WORKERS DDP processes share the GPU; DATA jpeg (as stored) or rejpeg (a second JPEG pass)",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile at batch 256 (costs ~1 min)")
    args = parser.parse_args(argv)
    recipes = [(spec, *parse_recipe(spec)) for spec in args.recipes.split(",")]  # bad specs fail first
    t0 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    result = {
        "benchmark": "gpu_cifar",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "throughput": [], "skipped": [],
    }
    steps = 2 if args.tiny else 40
    plan = [(256, "bf16", False), (256, "fp32", False), (512, "bf16", False), (1024, "bf16", False)]
    if args.tiny:
        plan = [(16, "bf16", False), (16, "fp32", False)]
    os.makedirs(args.out, exist_ok=True)

    def save() -> None:  # after every part: a timeout later keeps what was measured
        result["seconds"] = round(time.perf_counter() - t0, 1)
        with open(os.path.join(args.out, "gpu_cifar.json"), "w") as f:
            json.dump(result, f, indent=1)

    for batch_size, precision, compiled in ([] if args.skip_throughput else plan):
        result["throughput"].append(step_throughput(device, batch_size, precision, steps, compiled))
        print(json.dumps(result["throughput"][-1]), flush=True)
        save()
    epochs = 1 if args.tiny else args.epochs
    result["lab_recipes"] = []
    for spec, precision, seed, workers, data in recipes:
        if time.perf_counter() - t0 > args.max_seconds:
            result["skipped"].append(f"recipe {spec} (time budget)")
            continue
        recipe_args = (args.data_dir, epochs, precision, args.tiny, seed, data)
        try:
            if workers == 1:
                outcome = lab_recipe(device, *recipe_args)
            else:
                remaining_s = max(60.0, args.max_seconds - (time.perf_counter() - t0))
                outcome = lab_recipe_workers(device, workers, recipe_args, timeout_s=remaining_s)
        except Exception as exc:  # report, keep the other recipes' results
            outcome = {"recipe": spec, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        result["lab_recipes"].append(outcome)
        print(json.dumps({k: v for k, v in outcome.items() if k != "epoch_rows"}), flush=True)
        save()
    if args.compile and time.perf_counter() - t0 < args.max_seconds * 0.5:
        try:
            result["throughput"].append(step_throughput(device, 256, "bf16", steps, compile_model=True))
        except Exception as exc:  # torch.compile can fail on a toolchain: report, don't lose the rest
            result["skipped"].append(f"compiled bf16 256: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    elif args.compile:
        result["skipped"].append("compiled bf16 256 (time budget)")
    save()
    print(json.dumps({k: v for k, v in result.items() if k != "lab_recipes"}))
    return result


if __name__ == "__main__":
    main()
