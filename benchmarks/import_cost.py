"""What a fresh process pays to import what a Ray Train worker of a CIFAR run imports (the
per-worker module, cvray.on_ray.training), and what importing torchvision on top would add (it
pulls in torch._dynamo through torchvision.ops), side by side in one run. Every Ray Train worker,
controller and Tune trial driver is a new process that pays this once. Prints one JSON object.

    python benchmarks/import_cost.py [--rounds 5]

CPU seconds (user + system) of each child process, the median of interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path

CASES = {
    "torch": "import torch",
    "cvray_training_worker": "import cvray.on_ray.training",
    "cvray_training_worker_plus_torchvision": "import cvray.on_ray.training, torchvision",
}


def child_cpu_seconds(code: str) -> float:
    """CPU seconds of one fresh `python -c code` (its own usage, from os.wait4)."""
    env = {**os.environ, "PYTHONPATH": str(_bootstrap.REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{code!r} failed")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in CASES}
    child_cpu_seconds("import cvray.on_ray.training, torchvision")  # warm the page cache and .pyc files
    for _ in range(args.rounds):  # interleaved, so machine noise hits every case alike
        for name, code in CASES.items():
            seconds[name].append(child_cpu_seconds(code))
    median = {name: round(statistics.median(values), 3) for name, values in seconds.items()}
    print(json.dumps({
        "cpu_seconds_median": median,
        "torchvision_adds_s": round(median["cvray_training_worker_plus_torchvision"]
                                    - median["cvray_training_worker"], 3),
        "rounds": args.rounds,
        "python": sys.version.split()[0],
    }, indent=2))


if __name__ == "__main__":
    main()
