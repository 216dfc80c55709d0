"""Bulk stylisation throughput with 1 vs 2 Ray Data actors on this machine (one JSON object).

    python benchmarks/bulk_scaling.py [--images 16] [--px 64] [--iterations 50] [--repeats 1]

Generates one folder of same-shaped random JPEGs and stylises it end to end with the bulk
pipeline (run_bulk: listing, decode tasks, actor pool, atomic writes, manifest), random-init
VGG-19, into a fresh output each time. Two sizings are compared side by side, interleaved:

- fixed: every actor gets 1 CPU (1 torch thread); efficiency = (ips_2 / ips_1) / 2 is how well
  adding an actor adds throughput (1.0 = perfectly linear).
- fair_share: the job's default sizing, where 1 actor gets all the cores as threads and 2 actors
  split them; ratio = ips_2 / ips_1 says whether actors beat intra-op threads on this machine.

images/sec is end to end (including actor start-up and VGG construction), as the job reports it;
stylise_images_per_sec divides the images by the busiest actor's stylising seconds (from the
manifest), i.e. the steady-state rate without start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from _bootstrap import REPO_ROOT


def make_folder(root: Path, images: int, px: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(images):
        sub = root / f"set{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (px, px, 3), np.uint8)).save(sub / f"img{i:03d}.jpg", quality=90)
    style = root.parent / "style.png"
    Image.fromarray(rng.integers(0, 256, (px, px, 3), np.uint8)).save(style)
    return style


def run_once(inp: Path, out: Path, style: Path, args, num_actors: int, cpus_per_actor) -> dict:
    from cvray.on_ray.bulk import run_bulk
    from cvray.style.config import StyleConfig, StylizeFolderConfig

    config = StylizeFolderConfig(
        style=StyleConfig(size=args.px, iterations=args.iterations, weights="random", precision="fp32"),
        input=str(inp), output=str(out), style_images=(str(style),), num_actors=num_actors,
        batch_size=args.batch_size, overwrite=True, use_gpu=False, cpus_per_actor=cpus_per_actor,
    )
    start = time.perf_counter()
    summary = run_bulk(config)
    wall = time.perf_counter() - start
    rows = pq.read_table(out / "_cvray" / "manifest.parquet").to_pylist()
    if summary.done != args.images or summary.failed:
        raise RuntimeError(f"expected {args.images} done, got {summary.line()}")
    # Busy time per actor is not recorded, so bound it: the images' batch seconds summed over
    # all actors, divided by the actor count (exact when the actors share the work evenly).
    stylise_seconds = sum(r["seconds"] for r in rows) / num_actors
    return {"images_per_sec": summary.images_per_sec, "seconds": round(wall, 2),
            "stylise_images_per_sec": args.images / stylise_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import ray

    cpus = os.cpu_count() or 2
    # address="local": a fresh Ray of our own, never someone else's running cluster.
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    settings = {"fixed_1": (1, 1.0), "fixed_2": (2, 1.0), "fair_1": (1, None), "fair_2": (2, None)}
    runs = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in"
        style = make_folder(inp, args.images, args.px)
        for repeat in range(args.repeats):
            for name, (actors, cpus_per_actor) in settings.items():  # interleaved, side by side
                out = Path(tmp) / f"out_{name}_{repeat}"
                runs[name].append(run_once(inp, out, style, args, actors, cpus_per_actor))
    ray.shutdown()

    def median(name, key):
        return statistics.median(r[key] for r in runs[name])

    result = {
        "benchmark": "bulk_scaling",
        "machine": {"cpus": cpus, "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]},
        "images": args.images, "px": args.px, "iterations": args.iterations,
        "batch_size": args.batch_size, "repeats": args.repeats, "arch": "vgg19 (random init)",
        "fixed": {
            "ips_1": median("fixed_1", "images_per_sec"), "ips_2": median("fixed_2", "images_per_sec"),
            "efficiency": median("fixed_2", "images_per_sec") / median("fixed_1", "images_per_sec") / 2,
            "stylise_ips_1": median("fixed_1", "stylise_images_per_sec"),
            "stylise_ips_2": median("fixed_2", "stylise_images_per_sec"),
            "stylise_efficiency": median("fixed_2", "stylise_images_per_sec")
            / median("fixed_1", "stylise_images_per_sec") / 2,
        },
        "fair_share": {
            "ips_1": median("fair_1", "images_per_sec"), "ips_2": median("fair_2", "images_per_sec"),
            "ratio": median("fair_2", "images_per_sec") / median("fair_1", "images_per_sec"),
        },
        "runs": runs,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
