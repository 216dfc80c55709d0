"""Stylise one image: the d2l neural-style lab as a command (plain PyTorch, no Ray).

    python jobs/stylize.py --content rainier.jpg --style autumn-oak.jpg --output out/rainier.png

--output is the result image (.png, .jpg, .webp, ...; local path or object-store URI). Next to
it, named after it (out/rainier_*):
    rainier_losses.csv    iteration, content, style, tv, total (weighted, before each step)
    rainier_curves.png    those losses on a log scale
    rainier_strip.png     content | style | result
    rainier_run.json      the StyleConfig, inputs, device, seconds, final losses
    rainier_steps/        rainier_0050.png ... every --save-every iterations (when > 0)
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import sys

import _common
import _style_args
from cvray import names, storage
from cvray.errors import ConfigError
from cvray.grids import comparison_picture
from cvray.images import WRITE_FORMATS, encode_image, format_for, load_image, png_bytes, to_pil
from cvray.plots import loss_curves_png
from cvray.style.losses import LOSS_NAMES
from cvray.style.stylizer import Stylizer, load_style_images

PROGRESS_EVERY = 50  # iterations between console progress lines


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--content", required=True, metavar="IMG", help="content image (path or URI)")
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="result image; losses, curves, strip and steps are written beside it")
    parser.add_argument("--save-every", type=_common.non_negative_int, default=0, metavar="N",
                        help="also save the image every N iterations (0: never)")
    _style_args.add_style_args(parser)
    args = parser.parse_args(argv)

    config = _style_args.style_config_from_args(args)
    device = _style_args.resolve_device(args)
    paths = output_paths(args.output)
    if not storage.is_uri(args.output) and os.path.realpath(args.output) == os.path.realpath(args.content):
        raise ConfigError("--output is the content image itself; choose another path")
    content = load_image(args.content)
    styles = load_style_images(args.style)
    stylizer = Stylizer(config, styles, device=device)
    contents = stylizer.prepare_content(content).unsqueeze(0)
    height, width = contents.shape[2:]
    shown = [names.redact(p) for p in (args.content, *args.style)]  # URIs may carry credentials
    print(f"stylising {shown[0]} at {height}x{width} with {', '.join(shown[1:])} "
          f"({config.arch}, preset {config.preset}, {config.iterations} iterations on {device})")

    def on_step(iteration, images):
        if args.save_every and iteration % args.save_every == 0:
            path = f"{paths['steps']}/{paths['stem']}_{iteration:04d}.png"
            storage.write_bytes_atomic(path, png_bytes(to_pil(images[0])))
        if iteration % PROGRESS_EVERY == 0:
            print(f"iteration {iteration}/{config.iterations}", flush=True)

    every = math.gcd(args.save_every, PROGRESS_EVERY) if args.save_every else PROGRESS_EVERY
    result = stylizer.stylize(contents, callback=on_step, callback_every=every)
    write_outputs(paths, args, config, device, content, styles, result)
    final = {name: float(values[0, -1]) for name, values in result.losses.items() if values.shape[1]}
    if final:
        print(f"content loss {final['content']:.3f}, style loss {final['style']:.3f}, "
              f"TV loss {final['tv']:.3f}")
    print(f"{result.seconds:.1f} sec/image on {device}")
    print(f"wrote {names.redact(args.output)}")
    return 0


def output_paths(output: str) -> dict[str, str]:
    """The result path and its siblings (see the module docstring); ConfigError for a path
    without an image suffix."""
    folder, name = posixpath.split(output)  # "/"-separated for local paths and URIs alike
    stem, _, _ = name.rpartition(".")
    fmt = format_for(name)
    if not stem or fmt is None:
        raise ConfigError(
            f"--output must be an image file path ending {', '.join(WRITE_FORMATS)}, got {output!r}"
        )
    base = storage.join(folder, stem) if folder else stem
    return {
        "image": output, "stem": stem, "format": fmt,
        "losses": f"{base}_losses.csv", "curves": f"{base}_curves.png",
        "strip": f"{base}_strip.png", "run": f"{base}_run.json", "steps": f"{base}_steps",
    }


def write_outputs(paths, args, config, device, content, styles, result) -> None:
    image = to_pil(result.images[0])
    storage.write_bytes_atomic(paths["image"], encode_image(image, paths["format"]))
    rows = ["iteration," + ",".join(LOSS_NAMES)]
    n = result.losses["total"].shape[1]
    for i in range(n):
        rows.append(f"{i + 1}," + ",".join(f"{result.losses[k][0, i]:.9g}" for k in LOSS_NAMES))
    storage.write_text_atomic(paths["losses"], "\n".join(rows) + "\n")
    curves = {k: result.losses[k][0] for k in LOSS_NAMES}
    storage.write_bytes_atomic(paths["curves"], loss_curves_png(curves, title=paths["stem"]))
    strip = comparison_picture([[content, *styles, image]], height=image.height)
    storage.write_bytes_atomic(paths["strip"], png_bytes(strip))
    run = {
        "config": config.to_dict(), "content": args.content, "style": list(args.style),
        "device": device, "seconds": round(result.seconds, 3),
        "size": list(result.images.shape[2:]),
        "final_losses": {k: float(v[0, -1]) for k, v in result.losses.items() if n},
    }
    storage.write_text_atomic(paths["run"], json.dumps(names.redact_values(run), indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(_common.run(main))
