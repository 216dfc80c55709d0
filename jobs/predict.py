"""Predict every image under a folder with a trained run, on Ray Data (resumable; see docs/predict.md).

    python jobs/predict.py --run ~/cvray_results/RUN --input photos/ --output predictions/

Every image under --input (nested folders; jpg/png/webp/bmp/tiff/gif, any mode) is decoded at the
size the run's model expects and classified. OUTPUT/predictions.parquet has one row per image
(predicted class, its probability, one p_<class> column per class); when every top-level
sub-folder of the input is a class of the run (the train/<class>/ layout), also each image's label,
OUTPUT/accuracy.json and OUTPUT/confusion.png. OUTPUT/_cvray/manifest.parquet has one row per input
file. Rerunning the same command skips predicted images and retries failed ones; --overwrite
redoes everything.

Exit codes: 0 when the job ran to the end, even if some files failed (they are listed in the
summary and the manifest); 2 for a usage or input error (nothing predicted); 130 on Ctrl-C
(rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys

import _folder_args

import _common
from cvray import names
from cvray.classification.predict import PredictConfig


def build_parser() -> argparse.ArgumentParser:
    parser = _common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, metavar="RUN",
                        help="training run folder, or its model.pt (path or URI)")
    _folder_args.add_folder_args(parser, actors="predicting", batch_default=64,
                                 batch_help="images an actor feeds the model at a time")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="one GPU per actor (default: when the cluster has GPUs); --gpu on a "
                             "cluster without GPUs is an error")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    config = PredictConfig(run=args.run, **_folder_args.folder_fields(args))
    from cvray.on_ray.predict import run_predict  # after argument checks: --help stays fast

    result = run_predict(config, address=args.address)
    for line in result.lines():
        print(names.redact_text(line))
    return 0


if __name__ == "__main__":
    sys.exit(_common.run(main))
