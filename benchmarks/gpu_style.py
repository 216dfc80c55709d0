"""Seconds per 300x450, 500-iteration style image on one GPU: the lab's loop vs cvray. One JSON.

No Ray needed. Random-init VGG-19 (timing does not depend on the weights):
  lab          benchmarks/lab_style.py as d2l writes it: one image at a time, fp32, VGG not frozen
  lab_frozen   the same loop with the VGG frozen (requires_grad off)
  cvray_bf16_bN  cvray's Stylizer, N images per batch, bf16 autocast + channels_last
  cvray_fp32_bN  the same in fp32
Every config first runs a 3-iteration warm-up (cuDNN autotuning) and a short timed probe; a config
whose predicted time does not fit in what is left of --max-seconds is skipped and says so.
With --weights (the shared VGG-16 file) it also renders the README comparison picture at the
lab's 300x450 into --out (content | style | lab | balanced, then a style-weight row for each).

    python benchmarks/gpu_style.py --out /tmp/gpu_style \\
        --weights .devdata/weights/vgg16_features_hed.pth          # < 4 min on one H100
    python benchmarks/gpu_style.py --out /tmp/t --tiny   # seconds, on the CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from benchmarks.lab_style import lab_net, lab_stylize
from benchmarks.style_cpu import lab_indices, synthetic_images
from benchmarks.style_presets import comparison, run_setting
from cvray.images import load_image, to_pil, to_tensor
from cvray.style.config import StyleConfig
from cvray.style.losses import normalize
from cvray.style.stylizer import Stylizer
from cvray.style.vgg import build_vgg_features

PICTURE_INPUTS = [  # (content, style): the lead copies the shared data to .devdata/
    (".devdata/images/content/rainier.jpg", ".devdata/images/style/autumn-oak.jpg"),
    ("/work/shared/data/images/content/rainier.jpg", "/work/shared/data/images/style/autumn-oak.jpg"),
]


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lab_seconds(features, content, style, iterations, device, frozen) -> float:
    style_idx, content_idx = lab_indices("vgg19")
    net = lab_net(features, style_idx, content_idx)
    for p in net.parameters():
        p.requires_grad_(not frozen)  # d2l's VGG keeps requires_grad=True
        p.grad = None
    sync(device)
    start = time.perf_counter()
    lab_stylize(net, normalize(content[None]), normalize(style[None]), num_epochs=iterations,
                content_layers=content_idx, style_layers=style_idx)
    sync(device)
    seconds = time.perf_counter() - start
    for p in net.parameters():
        p.requires_grad_(False)
        p.grad = None
    return seconds


def cvray_seconds(features, contents, style, iterations, device, precision) -> float:
    config = StyleConfig(shape=tuple(contents.shape[2:]), iterations=iterations, precision=precision)
    stylizer = Stylizer(config, [to_pil(style)], device=device, features=features)
    return stylizer.stylize(contents).seconds  # synchronised inside


def measure(name, run, batch, iterations, probe_iterations, budget, device) -> dict:
    """Probe, predict, then run the full config if it fits the budget. Never raises."""
    entry = {"name": name, "batch": batch}
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run(3)  # warm-up: cuDNN autotunes each new shape (and the lab's weight gradients) here
        probe = run(probe_iterations)
        predicted = probe * iterations / probe_iterations
        entry["predicted_seconds"] = round(predicted, 2)
        if predicted > budget.left():
            entry["skipped"] = f"predicted {predicted:.0f} s > {budget.left():.0f} s left"
            return entry
        seconds = run(iterations)
        entry.update(seconds=round(seconds, 3), seconds_per_image=round(seconds / batch, 4))
        if device.type == "cuda":
            entry["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    except Exception as exc:  # an OOM or a bug in one config must not lose the others
        entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        entry["traceback_tail"] = traceback.format_exc().splitlines()[-3:]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(entry), file=sys.stderr, flush=True)
    return entry


def render_picture(args, shape, iterations, device, budget, out: Path) -> dict:
    inputs = [(c, s) for c, s in ([(args.content, args.style)] if args.content else PICTURE_INPUTS)
              if Path(c).exists() and Path(s).exists()]
    if not inputs:
        return {"skipped": "content/style images not found (.devdata/images/...)"}
    if budget.left() < (20 if device.type == "cuda" else 0):
        return {"skipped": f"{budget.left():.0f} s left"}
    content, style_image = (load_image(p) for p in inputs[0])
    features = build_vgg_features("vgg16", args.weights)
    runs = {name: run_setting(name, content, style_image, arch="vgg16", weights=args.weights,
                              shape=shape, iterations=iterations, device=device, features=features)
            for name in ("lab", "balanced")}
    path = out / "style_compare_gpu.jpg"  # JPEG: a 300x450 grid as PNG would pass 1 MB
    comparison(content, style_image, runs["lab"], runs["balanced"]).save(path, quality=90)
    return {"path": str(path), "inputs": list(inputs[0]), "shape": list(shape),
            "iterations": iterations,
            "settings": {k: {"runs": r["runs"], "seconds": r["seconds"], "config": r["config"]}
                         for k, r in runs.items()}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--weights", help="VGG-16 state dict for the comparison picture")
    parser.add_argument("--content", help="picture content image (default: rainier.jpg)")
    parser.add_argument("--style", help="picture style image (default: autumn-oak.jpg)")
    parser.add_argument("--batch-sizes", default="4,8,16")
    parser.add_argument("--max-seconds", type=float, default=200.0,
                        help="stop starting configs after this (the script must end < 4 min)")
    parser.add_argument("--tiny", action="store_true", help="32x48, 6 iterations: a CPU check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    budget = Budget(args.max_seconds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    shape, iterations, probe = ((32, 48), 6, 2) if args.tiny else ((300, 450), 500, 25)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    torch.manual_seed(0)
    features = build_vgg_features("vgg19", "random").to(device)
    images = synthetic_images(max(batch_sizes + [1]), *shape, seed=1).to(device)
    style = to_tensor(to_pil(synthetic_images(1, *shape, seed=2)[0])).to(device)
    report = {"benchmark": "gpu_style", "device": _device_name(device), "torch": torch.__version__,
              "arch": "vgg19", "weights": "random", "shape": list(shape), "iterations": iterations,
              "runs": []}

    def cv(batch, precision):
        return lambda n: cvray_seconds(features, images[:batch], style, n, device, precision)

    def lab(frozen):
        return lambda n: lab_seconds(features, images[0], style, n, device, frozen)

    main_batch = 8 if 8 in batch_sizes else batch_sizes[0]
    plan = [(f"cvray_bf16_b{main_batch}", cv(main_batch, "bf16"), main_batch),
            ("lab", lab(False), 1)]
    plan += [(f"cvray_bf16_b{b}", cv(b, "bf16"), b) for b in batch_sizes if b != main_batch]
    plan += [("cvray_bf16_b1", cv(1, "bf16"), 1), (f"cvray_fp32_b{main_batch}", cv(main_batch, "fp32"), main_batch),
             ("lab_frozen", lab(True), 1)]
    for i, (name, run, batch) in enumerate(plan):
        report["runs"].append(measure(name, run, batch, iterations, probe, budget, device))
        if i == 1 and args.weights:  # the README picture right after the two headline numbers
            report["picture"] = _safe(render_picture, args, shape, iterations, device, budget, out)
    if args.weights and "picture" not in report:
        report["picture"] = _safe(render_picture, args, shape, iterations, device, budget, out)
    _summarise(report)
    (out / "gpu_style.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return report


def _summarise(report: dict) -> None:
    done = {r["name"]: r["seconds_per_image"] for r in report["runs"] if "seconds_per_image" in r}
    cvray = {k: v for k, v in done.items() if k.startswith("cvray_bf16")}
    if cvray:
        best = min(cvray, key=cvray.get)
        report["best_cvray"] = {"name": best, "seconds_per_image": cvray[best],
                                "target_1s_met": cvray[best] <= 1.0}
        if "lab" in done:
            report["speedup_best_cvray_vs_lab"] = round(done["lab"] / cvray[best], 2)
    report["seconds_per_image"] = done


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "traceback_tail": traceback.format_exc().splitlines()[-3:]}


def _device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


if __name__ == "__main__":
    main()
