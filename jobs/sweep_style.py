"""Sweep style-transfer weights on Ray Tune: each trial is one stylisation of one content image.

    python jobs/sweep_style.py --content rainier.jpg --style autumn-oak.jpg        # style-weight 0.1..10
    python jobs/sweep_style.py --content c.jpg --style s.jpg --param "style-weight=0.3|1|3|10" \\
        --param "tv-weight=0|10"

Every style flag (`jobs/stylize.py --help`) is a fixed value, with the `balanced` preset unless
--preset says otherwise (under `lab` the style weight barely changes the image: docs/style.md);
`--param FIELD=A|B|C` or `--param FIELD=LOW..HIGH` sweeps content-weight, style-weight, tv-weight,
lr, iterations, style-scale, content-layers or style-layers. Every trial reports the content, style
and TV losses without weights on the lab's taps, so trials compare. The sweep folder holds the
images, trials.csv/.parquet, contact_sheet.png (one labelled tile per trial) and pareto.png (content
vs style loss, the front marked); each Pareto-front trial is printed as its jobs/stylize.py command.
Rerunning the same command resumes the sweep.
"""

from __future__ import annotations

import argparse
import sys

import _sweep_args

import _common
import _style_args
from cvray import names
from cvray.errors import ConfigError

DEFAULT_PARAM = "style-weight=0.1..10"
SWEEPABLE = ("content_weight", "style_weight", "tv_weight", "lr", "iterations", "style_scale", "content_layers",
             "style_layers")


def build_parser() -> argparse.ArgumentParser:
    p = _common.make_parser(__doc__.split("\n\n")[0])
    p.epilog = "Also --content IMG and every style flag as a fixed value: see python jobs/stylize.py --help."
    _sweep_args.add_sweep_args(p, DEFAULT_PARAM, early_stop=False)
    p.add_argument("--address", default=None, help="Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--storage-path", default="~/cvray_results", help="parent folder of the sweep folder")
    p.add_argument("--gpu-memory-gib", type=_common.positive_float, default=80.0,
                   help="memory of one GPU, to pack trials: each takes the GPU share its image size needs")
    p.add_argument("--verbose", action="store_true", help="also show Ray Tune's own logs")
    return p


def style_parser() -> argparse.ArgumentParser:
    p = _common.make_parser("the fixed style settings")
    p.add_argument("--content", required=True, metavar="IMG", help="content image (path or URI)")
    _style_args.add_style_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args, style_argv = build_parser().parse_known_args(argv)
    given = _sweep_args.given_flags(style_argv)
    if "preset" not in given:
        style_argv = [*style_argv, "--preset", "balanced"]
    style_args = style_parser().parse_args(style_argv)
    config = _style_args.style_config_from_args(style_args)
    from cvray.params import check_not_fixed, parse_param

    params = tuple(parse_param(text, type(config), SWEEPABLE) for text in (args.param or [DEFAULT_PARAM]))
    check_not_fixed(params, given)
    if len({p.field for p in params}) != len(params):
        raise ConfigError("each field may be swept by one --param only")
    search, samples = _sweep_args.search_and_samples(args, params)
    name = names.check_name(args.name) if args.name else f"sweep-style-{'-'.join(p.flag for p in params)}"
    from cvray import sweep_report
    from cvray.images import load_image
    from cvray.on_ray.style_sweeps import LOSS_KEYS, StyleSweep, run_style_sweep
    from cvray.style.stylizer import load_style_images

    content, styles = load_image(style_args.content), load_style_images(style_args.style)
    sweep = StyleSweep(config, params, name, args.storage_path, (style_args.content, *style_args.style),
                       search=search, num_samples=samples, retry_failed=args.retry_failed,
                       max_concurrent=args.max_concurrent, use_gpu=style_args.gpu, gpu_memory_gib=args.gpu_memory_gib)
    outcome = run_style_sweep(sweep, content, styles, address=args.address, fresh=args.fresh, verbose=args.verbose)
    swept = [p.field for p in params]
    print(_table(outcome.rows, swept, LOSS_KEYS))
    print(f"sweep folder: {outcome.directory} (trials.csv, contact_sheet.png, pareto.png)")
    if not outcome.front:
        print("no trial finished", file=sys.stderr)
        return 1
    print(f"Pareto front (lower content and style loss): {len(outcome.front)} trial(s); each on its own:")
    for row in outcome.front:
        out = f"{outcome.directory}/{row['trial']}-alone.png"
        print("  " + sweep_report.best_command("jobs/stylize.py", [*style_argv, "--output", out],
                                               {f: row[f] for f in swept}))
    if outcome.interrupted:
        raise KeyboardInterrupt("rerun the same command to resume the sweep")
    return 0


def _table(rows, swept, loss_keys) -> str:
    from cvray.sweep_report import fixed_width

    head = [*(s.replace("_", "-") for s in swept), "status", *(k.replace("_loss", "") for k in loss_keys), "seconds"]
    body = [[*(f"{r[s]:.3g}" if isinstance(r[s], float) else str(r[s]) for s in swept), r["status"],
             *(f"{r[k]:.4g}" for k in loss_keys), f"{r['seconds']:.1f}"] for r in rows]
    return fixed_width(head, body)


if __name__ == "__main__":
    sys.exit(_common.run(main))
