"""Every GPU measurement of the project in one call (the device machine has no Ray).

Runs benchmarks/gpu_cifar.py, benchmarks/gpu_style.py and benchmarks/gpu_finetune.py one after the
other, each in its own
process with its own time budget (a failure in one keeps the other's results), and collects their
JSON and pictures under --out.

    python benchmarks/gpu_suite.py --out $OUT            # on the GPU machine
    python benchmarks/gpu_suite.py --out /tmp/s --tiny   # a CPU check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))


def run(name: str, argv: list[str], timeout_s: float) -> dict:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.path.dirname(HERE)}
    try:
        proc = subprocess.run([sys.executable, os.path.join(HERE, name), *argv], env=env, timeout=timeout_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    return {"script": name, "exit": code, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--cifar-seconds", type=float, default=130)
    parser.add_argument("--style-seconds", type=float, default=150)
    parser.add_argument("--finetune-seconds", type=float, default=180)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tiny = ["--tiny"] if args.tiny else []
    cifar = ["--data-dir", ".devdata/cifar10", "--out", args.out, "--max-seconds", str(args.cifar_seconds), *tiny]
    if not os.path.isdir(".devdata/cifar10"):
        cifar[1] = "/work/shared/data/cifar10"
    weights = ".devdata/weights/vgg16_features_hed.pth"
    if not os.path.exists(weights):
        weights = "/work/shared/data/weights/vgg16_features_hed.pth"
    style = ["--out", args.out, "--max-seconds", str(args.style_seconds), "--weights", weights, *tiny]
    photos = ".devdata" if os.path.isdir(".devdata/images") else "/work/shared/data"
    finetune = ["--out", args.out, "--max-seconds", str(args.finetune_seconds), "--data", photos, *tiny]
    steps = [
        run("gpu_cifar.py", cifar, args.cifar_seconds + 60),
        run("gpu_style.py", style, args.style_seconds + 60),
        run("gpu_finetune.py", finetune, args.finetune_seconds + 90),
    ]
    summary = {"suite": steps}
    with open(os.path.join(args.out, "gpu_suite.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
