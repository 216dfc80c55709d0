"""The flags every folder job shares (stylize_folder, predict): input, output, actors, resume."""

from __future__ import annotations

import argparse

import _common


def add_folder_args(parser: argparse.ArgumentParser, *, actors: str, batch_default: int, batch_help: str) -> None:
    """--input, --output, --num-actors, --batch-size, --cpus-per-actor, --overwrite, --address.
    `actors` names what the actors do ("stylising", "predicting")."""
    parser.add_argument("--input", required=True, metavar="DIR", help="input folder (path or URI)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="output folder (path or URI), outside the input folder")
    parser.add_argument("--num-actors", type=_common.positive_int, default=None, metavar="N",
                        help=f"{actors} actors (default: one per GPU, else one per two CPUs)")
    parser.add_argument("--batch-size", type=_common.positive_int, default=batch_default, metavar="B",
                        help=batch_help)
    parser.add_argument("--cpus-per-actor", type=_common.positive_float, default=None, metavar="C",
                        help="CPU actors: torch threads each (default: a fair share of the cluster)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every image, even those finished by an earlier run")
    parser.add_argument("--address", default=None,
                        help="Ray cluster (HOST:PORT, ray://HOST:PORT, auto; default: RAY_ADDRESS or a local Ray)")


def folder_fields(args: argparse.Namespace) -> dict:
    """The folder-job config fields those flags set (and --gpu/--no-gpu, which each job adds)."""
    return {"input": args.input, "output": args.output, "num_actors": args.num_actors, "batch_size": args.batch_size,
            "overwrite": args.overwrite, "use_gpu": args.gpu, "cpus_per_actor": args.cpus_per_actor}
