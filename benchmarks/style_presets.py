"""Which settings make the style weight control style strength? One JSON object.

Runs each named setting on one content + style pair at several style weights (one batch: each
image gets its own style weight, which is the same as separate runs) and reports, per setting and
style weight, the final *unweighted* content and style losses and the style loss at the start
(the content image's own), so settings with different loss scales compare. A setting "controls strength" when
the content loss rises and the style loss falls steadily as the style weight grows.

    PYTHONPATH=. python benchmarks/style_presets.py --weights /work/shared/data/weights/vgg16_features_hed.pth \
        --arch vgg16 --out /tmp/presets          # + --picture docs/img/style_compare.png

Writes DIR/<setting>.png (content | style | one result per style weight) and DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from cvray.data.images import load_image, to_pil  # noqa: E402
from cvray.style import STYLE_PRESETS, Stylizer, preset_config  # noqa: E402
from cvray.style_report import comparison_picture  # noqa: E402

DATA = Path("/work/shared/data")
# name -> (preset, overrides, style weights to try); the middle weight is the setting's default.
SETTINGS = {
    "lab": ("lab", {}, (10.0, 300.0, 1e4)),
    "lab_lr0.03": ("lab", {"lr": 0.03}, (10.0, 300.0, 1e4)),
    "lab_normalized": ("lab", {"normalized_losses": True}, (0.3, 3.0, 30.0)),
    "balanced": ("balanced", {}, None),
}


def run_setting(name, args, content, style_image):
    preset, overrides, weights = SETTINGS[name]
    config = preset_config(preset, arch=args.arch, weights=args.weights, shape=args.shape,
                           iterations=args.iterations, **overrides)
    if weights is None:
        sw = config.style_weight
        weights = (sw / 30, sw, sw * 30)
    stylizer = Stylizer(config, [style_image])
    contents = stylizer.prepare_content(content).unsqueeze(0).repeat(len(weights), 1, 1, 1)
    result = stylizer.stylize(contents, style_weights=list(weights))
    rows = []
    for i, sw in enumerate(weights):
        rows.append({
            "style_weight": sw,
            "content_loss": float(result.losses["content"][i, -1] / config.content_weight),
            "style_loss": float(result.losses["style"][i, -1] / sw),
            "style_loss_at_start": float(result.losses["style"][i, 0] / sw),
        })
    return config, weights, result, rows


def main(argv=None):
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
    args = parser.parse_args(argv)
    args.shape = tuple(int(v) for v in args.shape.lower().split("x"))
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    content, style_image = load_image(args.content), load_image(args.style)
    report = {"shape": args.shape, "iterations": args.iterations, "arch": args.arch,
              "weights": args.weights, "settings": {}}
    finals = {}
    for name in args.settings.split(","):
        start = time.perf_counter()
        config, weights, result, rows = run_setting(name, args, content, style_image)
        finals[name] = (config, weights, result)
        report["settings"][name] = {"config": config.to_dict(), "runs": rows,
                                    "seconds": round(time.perf_counter() - start, 1)}
        strip = [to_pil(t) for t in result.images]
        comparison_picture([[content, style_image, *strip]],
                           [["content", "style", *[f"sw {w:g}" for w in weights]]],
                           height=strip[0].height).save(out / f"{name}.png")
        (out / "results.json").write_text(json.dumps(report, indent=1))
        print(name, json.dumps(rows), file=sys.stderr, flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
