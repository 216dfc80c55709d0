"""The flags every sweep job shares (sweep_train, sweep_style), with one meaning each."""

from __future__ import annotations

import argparse

import _common

DEFAULT_RANDOM_SAMPLES = 8


def add_sweep_args(parser: argparse.ArgumentParser, default_param: str, *, early_stop: bool) -> None:
    g = parser.add_argument_group("the sweep")
    g.add_argument("--param", action="append", default=None, metavar="FIELD=A|B|C or FIELD=LOW..HIGH",
                   help=f"a swept setting under its flag's name; repeatable (default: {default_param})")
    g.add_argument("--search", choices=("grid", "random", "optuna"), default=None,
                   help="grid: every combination of the values; random: --num-samples draws; optuna: Optuna's "
                        "TPE (default: grid when every --param lists values, else random)")
    g.add_argument("--num-samples", type=int, default=None,
                   help=f"trials drawn by random/optuna (default {DEFAULT_RANDOM_SAMPLES}); grid: repeats (default 1)")
    if early_stop:
        g.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                       help="run every trial to the end (default: ASHA stops weak trials after each epoch, "
                            "grace period one epoch)")
    g.add_argument("--no-retry-failed", dest="retry_failed", action="store_false",
                   help="when resuming, keep failed trials failed (default: retry them once)")
    g.add_argument("--max-concurrent", type=_common.positive_int, default=None,
                   help="trials at once (default: what the cluster can place)")
    g.add_argument("--name", default=None, help="sweep folder name (default: sweep-JOB-FIELDS)")
    g.add_argument("--fresh", action="store_true", help="delete the sweep folder of this name and start over")


def search_and_samples(args: argparse.Namespace, params) -> tuple[str, int]:
    """--search (default: grid when every param lists values) and --num-samples (its default)."""
    search = args.search or ("grid" if all(not p.is_range for p in params) else "random")
    samples = args.num_samples if args.num_samples is not None else (1 if search == "grid" else DEFAULT_RANDOM_SAMPLES)
    return search, samples


def given_flags(argv: list[str]) -> set[str]:
    """Config field names of the flags present in `argv` (e.g. "--batch-size=8" -> batch_size)."""
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
