"""Ray Tune glue for training sweeps: each trial is one training run of a recipe, launched by the
trial's driver function through the same launch function the jobs use (cvray.on_ray.training).

Tune facts this relies on (Ray 2.60): a driver function builds the TorchTrainer per trial with
TuneReportCallback (Train's reports become the trial's results); ASHA stops a trial by killing
its driver, so everything a trial leaves (metrics, curves, checkpoint) is written per epoch by
the workers; `Tuner.restore` resumes an interrupted sweep. Drivers reserve a small CPU fraction
(placement.DRIVER_CPUS) and `max_concurrent_trials` follows what the workers can get, so a sweep
runs on any cluster and never waits for CPUs its own drivers hold.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import threading
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from cvray import storage, sweep_report
from cvray.classification import runs
from cvray.classification.config import TrainConfig
from cvray.classification.recipes import Recipe
from cvray.errors import ConfigError
from cvray.on_ray.connect import check_reachable, connect
from cvray.on_ray.placement import DRIVER_CPUS, Placement, plan_trials
from cvray.on_ray.storage_check import check_storage_visible
from cvray.on_ray.training import launch_training
from cvray.params import ParamSpec

log = logging.getLogger(__name__)

SEARCHES = ("grid", "random", "optuna")
METRIC, MODE = "val_acc", "max"
SWEEP_FILE = "sweep.json"
RUNS_FOLDER = "runs"


@dataclass(frozen=True)
class TrainSweep:
    """What a training sweep runs: the job's fixed config, the swept fields, how to search."""

    recipe: Recipe
    base: TrainConfig
    params: tuple[ParamSpec, ...]
    name: str
    search: str = "grid"
    num_samples: int = 1
    """Random/Optuna: trials drawn; grid: repeats of the whole grid."""
    early_stop: bool = True
    retry_failed: bool = True
    max_concurrent: int | None = None

    def spec(self) -> dict[str, Any]:
        """What makes two sweep commands the same sweep (a rerun must match it to resume)."""
        return {"recipe": self.recipe.name, "base": self.base.hyperparameters(), "search": self.search,
                "num_samples": self.num_samples, "early_stop": self.early_stop,
                "params": [[p.field, list(p.values) if p.values else None, p.low, p.high] for p in self.params]}


def search_space(params: tuple[ParamSpec, ...], search: str) -> dict[str, Any]:
    space = {}
    for p in params:
        if p.is_range:
            if search == "grid":
                raise ConfigError(f"--param {p.flag}={p.low:g}..{p.high:g} is a range: grid search needs values "
                                  "A|B|C (or use --search random / optuna)")
            space[p.field] = (tune.lograndint(int(p.low), int(p.high) + 1) if p.integer
                              else tune.loguniform(p.low, p.high))
        else:
            space[p.field] = tune.grid_search(list(p.values)) if search == "grid" else tune.choice(list(p.values))
    return space


def trial_fn(params: dict[str, Any], *, shared: dict[str, Any]) -> None:
    """One trial's driver: its run folder (resumed when Tune restarts it), then the training run."""
    from ray.tune.integration.ray_train import TuneReportCallback

    recipe: Recipe = shared["recipe"]
    placement: Placement = shared["placement"]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    config = shared["base"].replace(**values, name=f"trial-{tune.get_context().get_trial_id()}",
                                    storage_path=shared["runs_dir"])
    directory = runs.run_dir(config)
    if runs.open_run(directory, recipe.name, config) is not None:
        return  # finished before (a restored sweep): nothing to train
    devices = launch_training(recipe, config, directory, placement, data=shared["data"], verbose=shared["verbose"],
                              callbacks=[TuneReportCallback()], checkpoints_kept=1)
    runs.finish_run(directory, recipe.name, config, devices)


@dataclass
class SweepOutcome:
    directory: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    interrupted: bool


def run_train_sweep(sweep: TrainSweep, *, address: str | None = None, fresh: bool = False,
                    verbose: bool = False) -> SweepOutcome:
    """Run (or resume) a training sweep; its table, picture and rows. Every input check runs
    before a trial starts and before the sweep folder is written."""
    check_reachable(address or os.environ.get("RAY_ADDRESS"))
    base = sweep.recipe.resolve(sweep.base)
    if base.val_share <= 0:
        raise ConfigError("sweeps select on a validation share: --val-share must be above 0")
    if sweep.recipe.streams(base):
        raise ConfigError("sweeps hold the data in memory: add --data-path memory (or use a smaller folder)")
    if base.min_workers is not None and base.min_workers != base.num_workers:
        raise ConfigError("sweeps take a fixed --num-workers (trials are placed whole), not MIN-MAX")
    if sweep.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {sweep.num_samples}")
    space = search_space(sweep.params, sweep.search)
    data = sweep.recipe.load_data(base)
    sweep.recipe.check(base)
    cluster = connect(address, quiet=not verbose)
    check_storage_visible(runs.absolute(base.storage_path))  # every trial's run folder lives there
    plan = plan_trials(cluster, base.num_workers, base.use_gpu, base.cpus_per_worker, sweep.max_concurrent)
    _check_batch_sizes(sweep, base, plan.workers.count)
    storage_path = runs.absolute(base.storage_path)
    directory = storage.join(storage_path, sweep.name)
    open_sweep(directory, sweep.spec(), fresh)
    base = base.replace(num_workers=plan.workers.count, use_gpu=plan.workers.use_gpu,
                        cpus_per_worker=plan.workers.cpus_each)
    shared = {"recipe": sweep.recipe, "base": base, "placement": plan.workers, "verbose": verbose,
              "runs_dir": storage.join(directory, RUNS_FOLDER), "data": ray.put(data.to_numpy())}
    del data
    trainable = tune.with_resources(tune.with_parameters(trial_fn, shared=shared), {"cpu": DRIVER_CPUS})
    count = trial_count(sweep.params, sweep.search, sweep.num_samples)
    log.info(f"sweep {sweep.name}: {count} trials, {plan.concurrency} at a time, each on "
             f"{plan.workers.count} worker(s) ({'GPU' if plan.workers.use_gpu else f'{plan.workers.cpus_each:g} CPU'}"
             f" each) -> {directory}")
    tuner = _tuner(sweep, trainable, space, plan.concurrency, storage_path, directory, base.epochs)
    results, ctrl_c = fit(tuner)
    rows = [_row(result, sweep, base) for result in results]
    return _report(directory, sweep, rows, was_interrupted(results, ctrl_c, count))


def _check_batch_sizes(sweep: TrainSweep, base: TrainConfig, workers: int) -> None:
    swept = next((p for p in sweep.params if p.field == "batch_size"), None)
    sizes = swept.values if swept is not None and swept.values else (base.batch_size,)
    for size in sizes:
        if int(size) % workers:
            raise ConfigError(f"batch size {size} is not divisible by {workers} workers (it is the global batch)")


def open_sweep(directory: str, spec: dict[str, Any], fresh: bool) -> None:
    """Get the sweep folder ready: deleted first with `fresh`; ConfigError when it holds a sweep
    started with other settings (resuming would mix them). Writes sweep.json."""
    path = storage.join(directory, SWEEP_FILE)
    if fresh and storage.exists(directory):
        if not storage.exists(path):
            raise ConfigError(f"--fresh: {directory} exists but is not a cvray sweep folder; not deleting it")
        storage.remove_tree(directory)
    saved = runs.read_json(path)
    if saved is not None and saved.get("spec") != _jsonable(spec):
        raise ConfigError(f"sweep {directory} was started with other settings: rerun those, pick another --name, "
                          "or add --fresh to start over")
    runs.write_json(path, {"spec": _jsonable(spec), "retried_failed": bool(saved and saved.get("retried_failed"))})


def _jsonable(value):
    import json

    return json.loads(json.dumps(value))


def trial_count(params: tuple[ParamSpec, ...], search: str, num_samples: int) -> int:
    """Trials a sweep runs in all: the grid's combinations times num_samples, else num_samples."""
    if search == "grid":
        return num_samples * math.prod(len(p.values) for p in params)
    return num_samples


def _tuner(sweep: TrainSweep, trainable, space: dict, concurrency: int, storage_path: str, directory: str,
           epochs: int) -> tune.Tuner:
    scheduler = None
    if sweep.early_stop and epochs > 1:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1, reduction_factor=2)
    return make_tuner(trainable, space, name=sweep.name, storage_path=storage_path, directory=directory,
                      search=sweep.search, num_samples=sweep.num_samples, concurrency=concurrency,
                      retry_failed=sweep.retry_failed, seed=sweep.base.seed, metric=METRIC, mode=MODE,
                      scheduler=scheduler)


def make_tuner(trainable, space: dict, *, name: str, storage_path: str, directory: str, search: str,
               num_samples: int, concurrency: int | None, retry_failed: bool, seed: int, metric: str, mode: str,
               scheduler=None) -> tune.Tuner:
    """A new Tuner for the sweep folder `directory`, or the restored one when it holds a sweep
    (finished and early-stopped trials kept, interrupted ones resumed, failed ones retried once)."""
    if tune.Tuner.can_restore(directory):
        state = runs.read_json(storage.join(directory, SWEEP_FILE)) or {}
        retry = retry_failed and not state.get("retried_failed")
        if retry:
            runs.write_json(storage.join(directory, SWEEP_FILE), {**state, "retried_failed": True})
        log.info(f"resuming sweep {directory}")
        return tune.Tuner.restore(directory, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=retry)
    search_alg = None
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=seed)
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler, search_alg=search_alg,
                                    num_samples=num_samples, max_concurrent_trials=concurrency,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def _row(result, sweep: TrainSweep, base: TrainConfig) -> dict[str, Any]:
    directory = _trial_dir(result, base, sweep)
    trial_config = result.config or (runs.read_json(storage.join(directory, "config.json")) if directory else None)
    values = {p.field: _value((trial_config or {}).get(p.field)) for p in sweep.params}
    history = runs.read_metrics(directory) if directory and storage.exists(
        storage.join(directory, "metrics.parquet")) else []
    val = [r["val_acc"] for r in history]
    best_at = max(range(len(history)), key=lambda i: val[i]) if history else None
    error = result.error
    status = ("failed" if error is not None else "not run" if not history
              else "finished" if len(history) >= base.epochs else "early-stopped")
    return {
        **values, "trial": os.path.basename(directory) if directory else "", "status": status,
        "error": "" if error is None else error_line(error), "epochs": len(history),
        "final_val_acc": val[-1] if history else math.nan,
        "best_val_acc": val[best_at] if history else math.nan,
        "final_test_acc": history[-1]["test_acc"] if history else math.nan,
        "test_acc_at_best_val": history[best_at]["test_acc"] if history else math.nan,
        "seconds": sum(r["epoch_seconds"] for r in history), "run_dir": directory or "",
        "_history": history,
    }


def trial_dirname(trial) -> str:
    """Tune's folder for a trial, named like its run folder: trial-<trial id>."""
    return f"trial-{trial.trial_id}"


def _trial_dir(result, base: TrainConfig, sweep: TrainSweep) -> str | None:
    if not result.path:
        return None
    return storage.join(runs.absolute(base.storage_path), sweep.name, RUNS_FOLDER, os.path.basename(result.path))


def _value(value):
    return tuple(value) if isinstance(value, list) else value


def error_line(error: BaseException) -> str:
    """The failure's cause in one line, without exception class paths ("a.b.C: ")."""
    from cvray.errors import root_cause_line

    return re.sub(r"\b(?:\w+\.)+\w+: ", "", root_cause_line(error))


def _report(directory: str, sweep: TrainSweep, rows: list[dict[str, Any]], interrupted: bool) -> SweepOutcome:
    swept = [p.field for p in sweep.params]
    rows.sort(key=lambda r: sweep_report.swept_order(r, swept))
    histories = {r["trial"]: r.pop("_history") for r in rows}
    sweep_report.write_table(directory, rows, swept)
    best = sweep_report.best_row(rows)
    labels = {r["trial"]: ", ".join(f"{f.replace('_', '-')}={sweep_report.flag_value(r[f])}" for f in swept)
              for r in rows}
    storage.write_bytes_atomic(storage.join(directory, sweep_report.CURVES_NAME), sweep_report.curves_png(
        histories, labels, best["trial"] if best else None, title=f"sweep {sweep.name}: validation accuracy"))
    return SweepOutcome(directory, rows, dict(best) if best else None, interrupted)


def fit(tuner: tune.Tuner):
    """tuner.fit(), and whether Ctrl-C (or SIGUSR1) ended it early.

    Tune's own SIGINT handler ends the run gracefully and marks the running trials TERMINATED, as if
    they had finished or ASHA had stopped them (their saved state still resumes them). It puts back
    the handler it found when it fires, so a handler of ours still in place afterwards means it did.
    """
    # Tune's newer console output prints a banner and a TensorBoard hint even at verbose=0; the old
    # reporter at verbose=0 prints nothing (our table at the end is the report).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if threading.current_thread() is not threading.main_thread():  # signals are the main thread's
        return tuner.fit(), False

    def ours(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, ours)
    try:
        results = tuner.fit()
        return results, signal.getsignal(signal.SIGINT) is ours
    finally:
        signal.signal(signal.SIGINT, previous)


def was_interrupted(results, ctrl_c: bool, expected_trials: int) -> bool:
    """Whether the sweep stopped before every trial ended: Ctrl-C, or trials never created."""
    return ctrl_c or len(results) < expected_trials or results.num_terminated + results.num_errors < len(results)
