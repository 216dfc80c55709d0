"""Which settings make the style weight control style strength? One JSON object.

Runs each named setting on one content + style pair at three style weights (one batch: each
image gets its own style weight, the same as three separate runs) and reports, per setting and
style weight, the final *unweighted* content and style losses and the style loss at the start
(the content image's own), so settings with different loss scales compare. A setting "controls
strength" when the content loss rises and the style loss falls steadily as the style weight grows.

    python benchmarks/style_presets.py --out /tmp/presets --picture docs/img/style_compare.png \\
        --arch vgg19 --weights ../shared/data/weights/vgg19_features_caffe.pth   # the docs' picture

(Without --arch/--weights: the shared edge-tuned VGG-16 weights, the study in docs/style.md.)

Writes DIR/<setting>.png (content | style | one result per style weight), DIR/results.json and,
with --picture, the README comparison (content | style | lab | preset, then each one's style
weight row). benchmarks/gpu_style.py renders the same picture at the lab's 300x450.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from cvray.grids import comparison_picture
from cvray.images import load_image, to_pil
from cvray.style.presets import preset_config
from cvray.style.stylizer import Stylizer

DATA = Path("/work/shared/data")
# name -> (preset, overrides, style weights); None: the preset's weight x 1/10, 1, 10.
SETTINGS = {
    "lab": ("lab", {}, (10.0, 300.0, 1e4)),
    "lab_lr0.03": ("lab", {"lr": 0.03}, (10.0, 300.0, 1e4)),
    "lab_small_weights": ("lab", {}, (1e-3, 1e-2, 1e-1)),
    "lab_normalized": ("lab", {"normalized_losses": True}, (0.3, 3.0, 30.0)),
    "balanced": ("balanced", {}, None),
    "balanced_tv10": ("balanced", {"tv_weight": 10.0}, None),
    "balanced_tv1": ("balanced", {"tv_weight": 1.0}, None),
    "balanced_lr0.02": ("balanced", {"lr": 0.02}, None),
}


def run_setting(name, content, style_image, *, arch, weights, shape, iterations, device="cpu",
                features=None) -> dict:
    """One batch: the setting at its three style weights. Returns rows of final losses and the
    result images (PIL)."""
    preset, overrides, style_weights = SETTINGS[name]
    config = preset_config(preset, arch=arch, weights=weights, shape=shape,
                           iterations=iterations, **overrides)
    if style_weights is None:
        style_weights = (config.style_weight / 10, config.style_weight, config.style_weight * 10)
    start = time.perf_counter()
    stylizer = Stylizer(config, [style_image], device=device, features=features)
    contents = stylizer.prepare_content(content).unsqueeze(0).repeat(len(style_weights), 1, 1, 1)
    result = stylizer.stylize(contents, style_weights=list(style_weights))
    rows = [{
        "style_weight": sw,
        "content_loss": float(result.losses["content"][i, -1] / config.content_weight),
        "style_loss": float(result.losses["style"][i, -1] / sw),
        "style_loss_at_start": float(result.losses["style"][i, 0] / sw),
        "tv_loss": float(result.losses["tv"][i, -1] / max(config.tv_weight, 1e-30)),
    } for i, sw in enumerate(style_weights)]
    return {"name": name, "config": config.to_dict(), "runs": rows,
            "seconds": round(time.perf_counter() - start, 2),
            "images": [to_pil(t) for t in result.images], "style_weights": list(style_weights)}


def comparison(content, style_image, lab: dict, preset: dict):
    """content | style | lab at its default weight | preset at its default weight, then one row
    per setting over its style weights."""
    height = lab["images"][0].height
    lab_sw, preset_sw = lab["config"]["style_weight"], preset["config"]["style_weight"]
    pick = lambda run, sw: run["images"][run["style_weights"].index(sw)]  # noqa: E731
    rows = [[content, style_image, pick(lab, lab_sw), pick(preset, preset_sw)],
            lab["images"], preset["images"]]
    labels = [["content", "style", f"lab (style weight {lab_sw:g})",
               f"{preset['config']['preset']} (style weight {preset_sw:g})"],
              [f"lab, style weight {w:g}" for w in lab["style_weights"]],
              [f"{preset['config']['preset']}, style weight {w:g}" for w in preset["style_weights"]]]
    return comparison_picture(rows, labels, height=height)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--content", default=str(DATA / "images/content/rainier.jpg"))
    parser.add_argument("--style", default=str(DATA / "images/style/autumn-oak.jpg"))
    parser.add_argument("--weights", default=str(DATA / "weights/vgg16_features_hed.pth"))
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--shape", default="150x225")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--picture", help="also write the README comparison picture here")
    parser.add_argument("--preset", default="balanced", help="the preset the picture shows")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.lower().split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    content, style_image = load_image(args.content), load_image(args.style)
    report = {"benchmark": "style_presets", "shape": shape, "iterations": args.iterations,
              "arch": args.arch, "weights": args.weights, "torch": torch.__version__,
              "settings": {}}
    runs = {}
    for name in args.settings.split(","):
        run = run_setting(name, content, style_image, arch=args.arch, weights=args.weights,
                          shape=shape, iterations=args.iterations)
        runs[name] = run
        report["settings"][name] = {k: run[k] for k in ("config", "runs", "seconds")}
        strip = comparison_picture([[content, style_image, *run["images"]]],
                                   [["content", "style", *[f"sw {w:g}" for w in run["style_weights"]]]],
                                   height=run["images"][0].height)
        strip.save(out / f"{name}.png")
        (out / "results.json").write_text(json.dumps(report, indent=1))
        print(name, json.dumps(run["runs"]), file=sys.stderr, flush=True)
    if args.picture:
        comparison(content, style_image, runs["lab"], runs[args.preset]).save(args.picture, optimize=True)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
