"""The bulk job's stylising actor without Ray, batch 1 vs batch B of one shape (one JSON object).

    python benchmarks/bulk_actor.py [--device cuda] [--images 16] [--px 450] [--iterations 100]
        [--batch-sizes 1,4] [--weights random|PATH] [--arch vgg19]

Runs the bulk job's own stages (cvray.style.bulk) as plain Python: decode_batch on a generated folder of same-shaped
JPEGs, then StylizeActor (the class Ray Data runs in the actor pool) on all of them, writing the
outputs and manifest parts. Needs no Ray, so it also checks the actor's GPU path on a machine
without Ray. images_per_sec excludes the actor's construction and one warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from cvray import folders
from cvray.style.bulk import StylizeActor, decode_batch, min_side
from cvray.style.config import StyleConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--px", type=int, default=450, help="long side; the images are 3:2")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--arch", default="vgg19")
    args = parser.parse_args()
    style = StyleConfig(arch=args.arch, weights=args.weights, size=args.px, iterations=args.iterations)
    rng = np.random.default_rng(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in"
        inp.mkdir()
        for i in range(args.images):
            array = rng.integers(0, 256, (args.px * 2 // 3, args.px, 3), np.uint8)
            Image.fromarray(array).save(inp / f"img{i:03d}.jpg", quality=90)
        buffer = Path(tmp) / "style.png"
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), np.uint8)).save(buffer)
        style_bytes = [buffer.read_bytes()]
        src = folders.open_folder(str(inp))
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            dst = folders.open_folder(str(Path(tmp) / f"out_b{batch_size}"))
            items = [{"relpath": e.rel, "input": src.uri_of(e.rel), "output": dst.uri_of(e.rel),
                      "in_path": src.path_of(e.rel), "out_path": dst.path_of(e.rel), "format": "JPEG",
                      "input_bytes": e.size} for e in folders.list_files(src)]
            decoded = decode_batch(pa.Table.from_pylist(items), src=src, dst=dst, style=style,
                                   minimum=min_side(style), run_id="bench")
            actor = StylizeActor(style=style, style_bytes=style_bytes, dst=dst, run_id="bench",
                                 batch_size=batch_size, threads=None, use_gpu=args.device == "cuda")
            actor(decoded.slice(0, batch_size))  # warm-up: kernels, cached style Grams
            start = time.perf_counter()
            out = actor(decoded)
            seconds = time.perf_counter() - start
            statuses = out.column("status").to_pylist()
            if statuses.count("done") != args.images:
                raise RuntimeError(f"batch {batch_size}: {out.to_pylist()[:3]}")
            results[batch_size] = {"images_per_sec": args.images / seconds, "seconds": round(seconds, 2)}
    first = results[min(results)]["images_per_sec"]
    print(json.dumps({
        "benchmark": "bulk_actor", "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "images": args.images, "shape": [args.px * 2 // 3, args.px], "iterations": args.iterations,
        "arch": args.arch, "weights": args.weights, "precision": style.precision,
        "by_batch_size": {str(b): {**r, "speedup_vs_smallest": r["images_per_sec"] / first}
                          for b, r in results.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
