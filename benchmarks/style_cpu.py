"""The lab's one-image-at-a-time style loop vs cvray's batched engine on this CPU. One JSON object.

Same network, images, size and iterations for all three:
  lab         benchmarks/lab_style.py, the d2l code as written (its VGG is not frozen, so every
              backward also computes the unused weight gradients), one image after another;
  lab_frozen  the same loop with requires_grad off on the VGG (what batching alone buys);
  cvray       cvray.style.stylizer.Stylizer, all images in one batch (fp32: bf16 is CUDA-only).
Each is run `--repeats` times, interleaved, after one warm-up; the fastest run counts.

    python benchmarks/style_cpu.py            # 4 images 64x96, 20 iterations, ~1-2 min
    python benchmarks/style_cpu.py --weights /work/shared/data/weights/vgg16_features_hed.pth --arch vgg16
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from benchmarks.lab_style import lab_net, lab_stylize
from cvray.images import to_pil, to_tensor
from cvray.style.config import StyleConfig
from cvray.style.losses import normalize
from cvray.style.stylizer import Stylizer
from cvray.style.vgg import arch_layer_names, build_vgg_features, default_content_layers

LAB_STYLE_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "conv5_1")


def synthetic_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth random pictures (n, 3, H, W) in [0, 1], quantised to 8 bits like decoded photos."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(1, height // 8), max(1, width // 8), generator=g)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (smooth * 255).round() / 255


def lab_indices(arch: str) -> tuple[list[int], list[int]]:
    """The lab's nn.Sequential indices of cvray's default taps for this arch."""
    names = arch_layer_names(arch)
    conv_of = lambda n: names.index(n.replace("relu", "conv"))  # noqa: E731 - in-place ReLU capture
    return [conv_of(n) for n in LAB_STYLE_NAMES], [conv_of(n) for n in default_content_layers(arch)]


def time_lab(features, contents, style, iterations, style_idx, content_idx, frozen) -> float:
    net = lab_net(features, style_idx, content_idx)
    for p in net.parameters():
        p.requires_grad_(not frozen)  # d2l's VGG keeps requires_grad=True
        p.grad = None
    start = time.perf_counter()
    for content in contents:  # one image at a time, as the lab does
        lab_stylize(net, normalize(content[None]), normalize(style[None]), num_epochs=iterations,
                    content_layers=content_idx, style_layers=style_idx)
    seconds = time.perf_counter() - start
    for p in net.parameters():
        p.requires_grad_(False)
        p.grad = None
    return seconds


def time_cvray(stylizer, contents, keep: list) -> float:
    result = stylizer.stylize(contents)
    keep[:] = [result]
    return result.seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg19")
    parser.add_argument("--weights", default="random", help="state dict path, or random")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--shape", default="64x96")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.shape.lower().split("x"))
    torch.manual_seed(0)
    features = build_vgg_features(args.arch, args.weights)
    contents = synthetic_images(args.images, height, width, seed=1)
    style = synthetic_images(1, height, width, seed=2)[0]
    style_idx, content_idx = lab_indices(args.arch)
    config = StyleConfig(arch=args.arch, shape=(height, width), iterations=args.iterations,
                         precision="fp32")
    # the style image at exactly the output shape: the lab's resize and cvray's agree
    stylizer = Stylizer(config, [to_pil(style)], features=features)
    style = to_tensor(to_pil(style))

    runs, last = {"lab": [], "lab_frozen": [], "cvray": []}, []
    warm = dict(iterations=2)
    time_lab(features, contents[:1], style, warm["iterations"], style_idx, content_idx, False)
    Stylizer(config.replace(**warm), [to_pil(style)], features=features).stylize(contents)
    for _ in range(args.repeats):
        runs["lab"].append(time_lab(features, contents, style, args.iterations, style_idx,
                                    content_idx, frozen=False))
        runs["lab_frozen"].append(time_lab(features, contents, style, args.iterations, style_idx,
                                           content_idx, frozen=True))
        runs["cvray"].append(time_cvray(stylizer, contents, last))
    per_image = {k: min(v) / args.images for k, v in runs.items()}
    # batched == alone? the same image optimised alone, compared with its batched result
    solo = stylizer.stylize(contents[:1]).images[0]
    drift = (solo - last[0].images[0]).abs()
    report = {
        "benchmark": "style_cpu",
        "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "arch": args.arch, "weights": args.weights, "images": args.images,
        "shape": [height, width], "iterations": args.iterations, "repeats": args.repeats,
        "seconds_per_image": {k: round(v, 4) for k, v in per_image.items()},
        "ratio_lab_over_cvray": round(per_image["lab"] / per_image["cvray"], 3),
        "ratio_lab_frozen_over_cvray": round(per_image["lab_frozen"] / per_image["cvray"], 3),
        "runs_seconds": {k: [round(s, 3) for s in v] for k, v in runs.items()},
        "image0_batched_vs_alone": {"max_abs": round(drift.max().item(), 6),
                                    "mean_abs": round(drift.mean().item(), 7),
                                    "pixels_off_by_over_1_255": round((drift > 1 / 255).float().mean().item(), 5)},
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
