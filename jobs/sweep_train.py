"""Sweep a training job's hyperparameters on Ray Tune: each trial is a full run of the job.

    python jobs/sweep_train.py --job cifar --smoke-test                       # lr 1e-4..1e-2, 8 trials
    python jobs/sweep_train.py --job cifar --data-dir DIR --param lr=1e-4|1e-3|1e-2 --param aug=flip|all
    python jobs/sweep_train.py --job finetune --data-dir photos/ --param lr=1e-5..1e-3 --search optuna

Every flag of the job (`jobs/train_cifar.py --help`, `jobs/finetune.py --help`) is taken as a fixed
value; `--param FIELD=A|B|C` (values) or `--param FIELD=LOW..HIGH` (log-uniform) sweeps a
hyperparameter under its flag's name. Trials select on a validation share of the training data
(--val-share, default 0.1 here); test accuracy is reported, never used to choose. Rerunning the same
command resumes the sweep; the best trial is printed as the job command that trains it alone.
"""

from __future__ import annotations

import argparse
import os
import sys

import _sweep_args
import finetune
import train_cifar

import _common
from cvray import names
from cvray.classification.config import TrainConfig
from cvray.errors import ConfigError

JOBS = {"cifar": ("jobs/train_cifar.py", train_cifar), "finetune": ("jobs/finetune.py", finetune)}
DEFAULT_PARAM = "lr=1e-4..1e-2"
SWEEP_VAL_SHARE = 0.1
NOT_SWEPT = {"val_share", "data_dir", "storage_path", "name", "max_failures", "eval_batch_size",
             "progress_every_s", "num_workers", "use_gpu", "cpus_per_worker", "epochs"}
"""Config fields that are where or how long a trial runs, not what it tries."""


def build_parser() -> argparse.ArgumentParser:
    p = _common.make_parser(__doc__.split("\n\n")[0])
    p.epilog = ("Every other flag is the swept job's, as a fixed value: see python jobs/train_cifar.py --help "
                "and python jobs/finetune.py --help.")
    p.add_argument("--job", choices=sorted(JOBS), default="cifar", help="the training job to sweep")
    _sweep_args.add_sweep_args(p, DEFAULT_PARAM, early_stop=True)
    return p


def sweepable_fields(job_parser: argparse.ArgumentParser, config: TrainConfig) -> set[str]:
    flags = {o for action in job_parser._actions for o in action.option_strings if action.nargs != 0}
    return {f for f in config.to_dict() if f"--{f.replace('_', '-')}" in flags and f not in NOT_SWEPT}


def make_sweep(args: argparse.Namespace, job_argv: list[str]):
    from cvray.params import check_not_fixed, parse_param

    script, module = JOBS[args.job]
    job_args = module.build_parser().parse_args(job_argv)
    given = _sweep_args.given_flags(job_argv)
    if "val_share" not in given:
        job_args.val_share = SWEEP_VAL_SHARE
    if getattr(job_args, "compare", False):
        raise ConfigError("--compare runs two trainings; sweep --scratch as a value instead")
    config = module.config_from_args(job_args)
    params = tuple(parse_param(text, type(config), sweepable_fields(module.build_parser(), config))
                   for text in (args.param or [DEFAULT_PARAM]))
    check_not_fixed(params, given)
    if len({p.field for p in params}) != len(params):
        raise ConfigError("each field may be swept by one --param only")
    search, samples = _sweep_args.search_and_samples(args, params)
    name = names.check_name(args.name) if args.name else f"sweep-{args.job}-{'-'.join(p.flag for p in params)}"
    fixed = list(job_argv) + ([] if "val_share" in given else ["--val-share", str(SWEEP_VAL_SHARE)])
    return script, module, job_args, config, params, search, samples, name, fixed


def main(argv: list[str] | None = None) -> int:
    args, job_argv = build_parser().parse_known_args(argv)
    script, module, job_args, config, params, search, samples, name, fixed = make_sweep(args, job_argv)
    from cvray.on_ray.connect import check_reachable

    check_reachable(job_args.address or os.environ.get("RAY_ADDRESS"))
    from cvray import sweep_report
    from cvray.classification.recipes import get_recipe
    from cvray.on_ray.sweeps import TrainSweep, run_train_sweep

    recipe = get_recipe("finetune" if args.job == "finetune" else "cifar10")
    sweep = TrainSweep(recipe, config, params, name, search=search, num_samples=samples,
                       early_stop=args.early_stop, retry_failed=args.retry_failed, max_concurrent=args.max_concurrent)
    outcome = run_train_sweep(sweep, address=job_args.address, fresh=args.fresh, verbose=job_args.verbose)
    swept = [p.field for p in params]
    print(sweep_report.console_table(outcome.rows, swept))
    print(f"sweep folder: {outcome.directory} ({sweep_report.TABLE_NAME}.csv, {sweep_report.CURVES_NAME})")
    if outcome.best is None:
        print("no trial finished", file=sys.stderr)
        return 1
    best = outcome.best
    print(f"best: {best['trial']} (val acc {best['best_val_acc']:.3f}, test acc {best['final_test_acc']:.3f})")
    print("train it on its own: " + sweep_report.best_command(script, fixed, {f: best[f] for f in swept},
                                                               f"{name}-best"))
    if outcome.interrupted:
        raise KeyboardInterrupt("rerun the same command to resume the sweep")
    return 0


if __name__ == "__main__":
    sys.exit(_common.run(main))
