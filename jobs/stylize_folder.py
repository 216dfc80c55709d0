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

import argparse
import sys

import _folder_args

import _common
import _style_args
from cvray import names
from cvray.style.config import StylizeFolderConfig


def build_parser() -> argparse.ArgumentParser:
    parser = _common.make_parser(__doc__.splitlines()[0])
    _folder_args.add_folder_args(parser, actors="stylising", batch_default=4,
                                 batch_help="images of one shape optimised together by an actor")
    _style_args.add_style_args(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    config = StylizeFolderConfig(style=_style_args.style_config_from_args(args), style_images=tuple(args.style),
                                 **_folder_args.folder_fields(args))
    from cvray.on_ray.bulk import run_bulk  # after argument checks: --help stays fast

    summary = run_bulk(config, address=args.address)
    print(names.redact_text(summary.line()))
    for error in summary.errors:
        print(names.redact_text(f"  failed: {error}"))
    return 0


if __name__ == "__main__":
    sys.exit(_common.run(main))
