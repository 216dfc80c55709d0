"""Ray Train glue for CIFAR-10 training: per-worker function, checkpoints, TorchTrainer.

The training itself is cvray.classification.worker.CifarRun (plain PyTorch); this module only places it on
Ray workers, checkpoints it every epoch, and keeps the run folder (cvray.classification.runs) up to date.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import torch

from cvray import plots as report, storage
from cvray.classification import runs
from cvray.classification.worker import CifarRun, summarize
from cvray.on_ray.connect import ClusterInfo, check_reachable, connect
from cvray.config import CifarTrainConfig
from cvray.errors import ClusterError, ConfigError, CvrayError

STATE_FILE = "state.pt"


class TrainingFailed(CvrayError):
    """Training started but a worker failed for good (exit code 1: the input was fine)."""


def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: load data, restore, train epochs, checkpoint each one."""
    import ray.train
    import ray.train.torch

    from cvray.classification.cifar import load_cifar10

    config = CifarTrainConfig.from_dict(loop_config["config"])
    directory = loop_config["run_dir"]
    if not loop_config.get("verbose"):
        _quiet_report_log()
    torch.set_num_threads(max(1, int(config.cpus_per_worker or 1)))
    device = ray.train.torch.get_device()
    arrays = load_cifar10(config.data_dir, train_samples=config.train_samples, test_samples=config.test_samples)
    run = CifarRun(config, arrays, device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, STATE_FILE), map_location=device, weights_only=True)
        run.load_state_dict(state)
        if run.rank == 0:
            print(f"resumed from the checkpoint after epoch {run.epoch}", flush=True)
    device_names = ",".join(_gather_device_names(device))
    while run.epoch < config.epochs:
        progress = None
        if run.rank == 0:  # a line now and then inside long (CPU) epochs
            progress = functools.partial(_print_progress, epoch=run.epoch + 1, epochs=config.epochs, world_size=run.world_size)
        row = run.run_epoch(progress)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if run.rank == 0:
                torch.save(run.state_dict(), os.path.join(folder, STATE_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(folder)
                # Rows are keyed by epoch and files rewritten whole: an epoch that runs twice
                # after a lost report leaves one row.
                runs.write_metrics(directory, run.history)
                report.write_curves(storage.join(directory, "curves.png"), run.history, directory.rsplit("/", 1)[-1])
                print(report.epoch_line(row, config.epochs), flush=True)  # progress on the driver's console
            # A barrier: every worker reports once per epoch.
            ray.train.report({**row, "devices": device_names}, checkpoint=checkpoint)
    if run.rank == 0:
        runs.save_model(directory, run.state_dict())


def _print_progress(sums: dict[str, float], *, epoch: int, epochs: int, world_size: int) -> None:
    print(report.progress_line(sums, epoch, epochs, world_size), flush=True)


def _quiet_report_log() -> None:
    """Ray Train (2.60) logs every report, metrics dict and all, at INFO on a logger named by its
    file path, which LoggingConfig does not reach: raise that one logger to WARNING."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: keep its logs
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _gather_device_names(device: torch.device) -> list[str]:
    import torch.distributed as dist

    name = str(device) if device.type == "cuda" else "cpu"
    if not (dist.is_available() and dist.is_initialized()):
        return [name]
    names: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(names, name)
    return names


@dataclass(frozen=True)
class Placement:
    """Where the workers go: decided from the config and what the cluster has."""

    num_workers: int
    use_gpu: bool
    cpus_per_worker: float


def plan_placement(config: CifarTrainConfig, cluster: ClusterInfo) -> Placement:
    use_gpu = config.use_gpu if config.use_gpu is not None else cluster.gpus > 0
    if use_gpu and cluster.gpus < 1:
        raise ClusterError("--gpu asked but the Ray cluster has no GPUs (use --no-gpu)")
    num_workers = config.num_workers or (int(cluster.gpus) if use_gpu else 1)
    if use_gpu and num_workers > cluster.gpus:
        raise ClusterError(f"--num-workers {num_workers} needs {num_workers} GPUs; the cluster has {cluster.gpus:g}")
    if config.batch_size % num_workers:
        raise ConfigError(
            f"--batch-size {config.batch_size} is not divisible by {num_workers} workers "
            f"(it is the global batch; each worker takes batch_size / workers)"
        )
    share = cluster.cpus / num_workers
    default_cpus = max(1, math.floor(share)) if not use_gpu else max(1, min(4, math.floor(share)))
    cpus = config.cpus_per_worker or default_cpus
    if cpus * num_workers > cluster.cpus:
        raise ClusterError(
            f"{num_workers} workers x {cpus:g} CPUs need {num_workers * cpus:g} CPUs; the cluster has {cluster.cpus:g}"
        )
    return Placement(num_workers, use_gpu, cpus)


def run_training(
    config: CifarTrainConfig, *, address: str | None = None, fresh: bool = False,
    log: Callable[[str], None] = print, verbose: bool = False,
) -> dict[str, Any]:
    """Run (or resume, or just report) a CIFAR training run; returns its summary dict.

    Everything that can be wrong with the input is checked before the run folder is touched.
    verbose: show Ray Train's own INFO logs (worker groups, checkpoints, restart decisions).
    """
    from cvray.classification.cifar import load_cifar10

    # Cheap checks first: a wrong --address fails before a download, and a bad dataset is
    # fetched (or downloaded) and validated on the driver before Ray's ~10 s start-up.
    check_reachable(address or os.environ.get("RAY_ADDRESS"))
    arrays = load_cifar10(config.data_dir, train_samples=config.train_samples, test_samples=config.test_samples)
    log(f"data: {len(arrays.train_labels)} train / {len(arrays.test_labels)} test images ({arrays.source}) from {config.data_dir}")
    del arrays  # each worker loads its own copy onto its device
    cluster = connect(address)
    placement = plan_placement(config, cluster)
    config = config.replace(
        name=config.name or config.default_name(),
        storage_path=_absolute(config.storage_path),
        num_workers=placement.num_workers, use_gpu=placement.use_gpu, cpus_per_worker=placement.cpus_per_worker,
    )
    directory = runs.run_dir(config)
    if fresh:
        _remove_run(directory)
    elif runs.check_resumable(directory, config) is not None:
        done = _finished_summary(directory, config)
        if done is not None:
            log(f"run {directory} already has {done['epochs']} epochs: reporting its results")
            return done
        log(f"resuming run {directory}")
    runs.write_json(storage.join(directory, "config.json"), config.to_dict())
    log(
        f"training {config.epochs} epoch{'s' if config.epochs != 1 else ''} on {placement.num_workers} worker(s) "
        f"({'GPU' if placement.use_gpu else f'{placement.cpus_per_worker:g} CPU'} each) -> {directory}"
    )
    try:
        devices = _fit(config, placement, directory, verbose)
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C: Ray Train's own SIGINT handler aborts the run and calls sys.exit inside fit().
        done = max((r["epoch"] for r in runs.read_metrics(directory)), default=0)
        raise KeyboardInterrupt(f"stopped after epoch {done} of {config.epochs}; rerun the same command to resume") from None
    history = runs.read_metrics(directory)
    summary = {**summarize(history), "devices": devices, "run_dir": directory, "config": config.to_dict()}
    runs.write_json(storage.join(directory, "summary.json"), summary)
    return summary


def _fit(config: CifarTrainConfig, placement: Placement, directory: str, verbose: bool = False) -> list[str]:
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"config": config.to_dict(), "run_dir": directory, "verbose": verbose},
        scaling_config=ray.train.ScalingConfig(
            num_workers=placement.num_workers, use_gpu=placement.use_gpu,
            resources_per_worker={"CPU": placement.cpus_per_worker, **({"GPU": 1} if placement.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=config.name, storage_path=config.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Quiet by default: our per-epoch line is the progress; Ray Train's INFO lines (two per
            # epoch, with the whole metrics dict) would bury it. Warnings and errors still show.
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
    )
    try:
        result = trainer.fit()
    except (ray.train.TrainingFailedError, ray.train.ControllerError) as exc:
        raise TrainingFailed(f"training failed: {_root_cause(exc)}; rerun the same command to resume") from None
    metrics = result.metrics or {}
    devices = str(metrics.get("devices", "")).split(",") if metrics.get("devices") else []
    return devices or ["cpu"] * placement.num_workers


def _finished_summary(directory: str, config: CifarTrainConfig) -> dict[str, Any] | None:
    summary = runs.read_json(storage.join(directory, "summary.json"))
    if summary and summary.get("epochs", 0) >= config.epochs and storage.exists(storage.join(directory, "model.pt")):
        return summary
    return None


def _remove_run(directory: str) -> None:
    """--fresh: delete an earlier run, but only a folder that is recognisably a run folder."""
    if not storage.exists(directory):
        return
    if not storage.exists(storage.join(directory, "config.json")):
        raise ConfigError(f"--fresh: {directory} exists but is not a cvray run folder; not deleting it")
    storage.remove_tree(directory)


def _absolute(path: str) -> str:
    return path if storage.is_uri(path) else os.path.abspath(os.path.expanduser(path))


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
