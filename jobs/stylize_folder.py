"""Stylise every image under a folder on Ray Data (resumable; see docs/bulk.md).

    python jobs/stylize_folder.py --input photos/ --style autumn-oak.jpg --output styled/

Every image under --input (nested folders; jpg/png/webp/bmp/tiff/gif, any mode) is written under
--output with the same relative path, as RGB, in its own format (GIF becomes PNG). Rerunning the
same command skips finished images and retries failed ones; --overwrite redoes everything.
OUTPUT/_cvray/manifest.parquet (and .csv) has one row per input file.

Exit codes: 0 when the job ran to the end, even if some images failed (they are listed in the
summary and the manifest); 2 for a usage or input error (nothing stylised); 130 on Ctrl-C
(rerun the same command to resume).
"""

from __future__ import annotations

import sys

import _common
import _style_args
from cvray.style.config import StylizeFolderConfig


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, metavar="DIR", help="input folder (path or URI)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="output folder (path or URI), outside the input folder")
    parser.add_argument("--num-actors", type=_common.positive_int, default=None, metavar="N",
                        help="stylising actors (default: one per GPU, else one per two CPUs)")
    parser.add_argument("--batch-size", type=_common.positive_int, default=4, metavar="B",
                        help="images of one shape optimised together by an actor")
    parser.add_argument("--cpus-per-actor", type=_common.positive_float, default=None, metavar="C",
                        help="CPU actors: torch threads each (default: a fair share of the cluster)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every image, even those finished by an earlier run")
    parser.add_argument("--address", default=None,
                        help="Ray cluster (HOST:PORT, ray://HOST:PORT, auto; default: RAY_ADDRESS "
                             "or a local Ray)")
    _style_args.add_style_args(parser)
    args = parser.parse_args(argv)

    config = StylizeFolderConfig(
        style=_style_args.style_config_from_args(args),
        input=args.input,
        output=args.output,
        style_images=tuple(args.style),
        num_actors=args.num_actors,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        use_gpu=args.gpu,
        cpus_per_actor=args.cpus_per_actor,
    )
    from cvray.on_ray.bulk import run_bulk  # after argument checks: --help stays fast

    summary = run_bulk(config, address=args.address)
    print(summary.line())
    for error in summary.errors:
        print(f"  failed: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(_common.run(main))
