"""Ray Train glue for every training recipe: the per-worker function, the launch function and the
job's driver.

The training itself is cvray.classification.worker.WorkerRun (plain PyTorch) and the run folder's
lifecycle is cvray.classification.runs'; this module only places workers, checkpoints every
epoch and reports. Shape (Ray Train V2's): `train_fn_per_worker` runs on each worker;
`launch_training` builds and fits the TorchTrainer for one run (a Tune trial's driver function can
call it too); `run_training` is a job's whole driver: checks, placement, run folder, launch.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import ray.train
import torch
from ray.train.torch import TorchTrainer

from cvray import console
from cvray.classification import runs
from cvray.classification.config import TrainConfig
from cvray.classification.datasets import ImageClassData
from cvray.classification.metrics import ProgressSums, RunSummary
from cvray.classification.recipes import Recipe
from cvray.classification.worker import WorkerRun
from cvray.errors import ConfigError, CvrayError, root_cause_line
from cvray.on_ray import streaming
from cvray.on_ray.connect import check_reachable, connect
from cvray.on_ray.placement import Placement, plan_workers
from cvray.on_ray.streaming import StreamSource

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
CHECKPOINTS_KEPT = 2


class TrainingFailed(CvrayError):
    """Training started but a worker failed for good (exit code 1: the input was fine)."""


def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: load data, restore, train epochs, checkpoint each one.

    loop_config: {"recipe": Recipe, "config": config dict, "run_dir": str, "threads": int,
    "verbose": bool, "data": an object ref of ImageClassData.to_numpy() (decoded once by the driver;
    shared without copies by the workers of a node), or None to load it here; "stream": None, or
    {"classes", "num_train"} when the data comes as Ray Data shards}. Rank 0 writes the run
    folder's per-epoch files and logs the epoch line.
    """
    recipe: Recipe = loop_config["recipe"]
    config = recipe.config_from_dict(loop_config["config"])
    directory = loop_config["run_dir"]
    console.configure_logging()
    if not loop_config.get("verbose"):
        _quiet_report_log()
    torch.set_num_threads(loop_config.get("threads") or 1)
    device = ray.train.torch.get_device()
    stream, ref = loop_config.get("stream"), loop_config.get("data")
    if stream is not None:  # Ray Data shards, decoded on the cluster every epoch
        streaming.quiet_ray_data(loop_config.get("verbose", False))
        data = StreamSource(stream["classes"], stream["num_train"], device, config.seed)
    else:
        data = ImageClassData.from_numpy(ray.get(ref)) if ref is not None else recipe.load_data(config)
    run = WorkerRun(recipe, config, data, device)
    del data
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, STATE_FILE), map_location=device, weights_only=True)
        run.load_state_dict(state)
        if run.rank == 0:
            log.info(f"resumed from the checkpoint after epoch {run.epoch}")
    device_names = ",".join(_gather_device_names(device))
    while run.epoch < config.epochs:
        progress = None
        if run.rank == 0:  # a line now and then inside long (CPU) epochs
            progress = functools.partial(_log_progress, epoch=run.epoch + 1, epochs=config.epochs,
                                         world_size=run.world_size)
        row = run.run_epoch(progress)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if run.rank == 0:
                torch.save(run.state_dict(), os.path.join(folder, STATE_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(folder)
                runs.write_epoch_files(directory, run.history)  # keyed by epoch: a rerun epoch leaves one row
                # model.pt after every epoch: a run stopped early (a sweep's ASHA, Ctrl-C) is usable as it is.
                runs.save_model(directory, run.state_dict())
                log.info(console.epoch_line(row, config.epochs))
            # A barrier: every worker reports once per epoch.
            ray.train.report({**row, "devices": device_names}, checkpoint=checkpoint)


def _log_progress(sums: ProgressSums, *, epoch: int, epochs: int, world_size: int) -> None:
    log.info(console.progress_line(sums, epoch, epochs, world_size))


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


def launch_training(
    recipe: Recipe, config: TrainConfig, directory: str, placement: Placement, *,
    data: ray.ObjectRef | None = None, stream: Stream | None = None, verbose: bool = False,
    callbacks: list | None = None, checkpoints_kept: int = CHECKPOINTS_KEPT,
) -> list[str]:
    """Fit one run on Ray Train (resuming from its latest checkpoint, if any); the devices used.

    `config.name` and `config.storage_path` (absolute) place Ray Train's own files in `directory`.
    data: the decoded data in the object store (ImageClassData.to_numpy()); None: each worker
    loads it. stream: Ray Data datasets to read instead (the "train" one split over the workers).
    callbacks: Ray Train RunConfig callbacks (a Tune trial passes its report callback).
    checkpoints_kept: the latest checkpoints kept in the run folder (a sweep trial keeps one).
    Raises TrainingFailed when the worker group fails for good.
    """
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
            "recipe": recipe, "config": config.to_dict(), "run_dir": directory, "verbose": verbose,
            "threads": placement.threads_each, "data": data,
            "stream": None if stream is None else {"classes": stream.classes, "num_train": stream.num_train},
        },
        datasets=None if stream is None else stream.datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        scaling_config=ray.train.ScalingConfig(
            num_workers=placement.count, use_gpu=placement.use_gpu,
            resources_per_worker={"CPU": placement.cpus_each, **({"GPU": 1} if placement.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=config.name, storage_path=config.storage_path, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=checkpoints_kept),
            # Quiet by default: our per-epoch line is the progress; Ray Train's INFO lines (two per
            # epoch, with the whole metrics dict) would bury it. Warnings and errors still show.
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
    )
    try:
        result = trainer.fit()
    except (ray.train.TrainingFailedError, ray.train.ControllerError) as exc:
        cause = root_cause_line(exc)
        hint = "" if "diverged" in cause else "; rerun the same command to resume"  # a rerun would diverge again
        raise TrainingFailed(f"training failed: {cause}{hint}") from None
    metrics = result.metrics or {}
    devices = str(metrics.get("devices", "")).split(",") if metrics.get("devices") else []
    return devices or ["cpu"] * placement.count


@dataclass(frozen=True)
class Stream:
    """The Ray Data input of a streamed run."""

    datasets: dict[str, ray.data.Dataset]
    classes: list[str]
    num_train: int


def run_training(
    recipe: Recipe, config: TrainConfig, *, address: str | None = None, fresh: bool = False, verbose: bool = False,
) -> RunSummary:
    """Run (or resume, or just report) one training run of `recipe`; returns its summary.

    Everything that can be wrong with the input is checked before the run folder is touched: the
    data is read (decoded once, here; or, for data streamed through Ray Data, checked by one pass
    on the cluster) and the recipe's own checks run.
    verbose: show Ray Train's own INFO logs (worker groups, checkpoints, restart decisions).
    """
    # Cheap checks first: a wrong --address fails before a download, and bad data is found on the
    # driver before Ray's ~10 s start-up.
    check_reachable(address or os.environ.get("RAY_ADDRESS"))
    config = recipe.resolve(config)
    streams = recipe.streams(config)
    if streams and config.val_share > 0:
        raise ConfigError("--val-share needs the data held in memory: add --data-path memory (or a smaller folder)")
    data = None if streams else recipe.load_data(config)
    recipe.check(config)
    cluster = connect(address, quiet=not verbose)
    placement = plan_workers(cluster, config.num_workers, config.use_gpu, config.cpus_per_worker,
                             leave_cpus_for_tasks=streams)
    if config.batch_size % placement.count:
        raise ConfigError(
            f"--batch-size {config.batch_size} is not divisible by {placement.count} workers "
            f"(it is the global batch; each worker takes batch_size / workers)"
        )
    stream, skipped = (_prepare_stream(recipe, config, verbose) if streams else (None, data.skipped))
    _log_data(config, data, stream, skipped)
    config = config.replace(
        name=config.name or config.default_name(), storage_path=runs.absolute(config.storage_path),
        num_workers=placement.count, use_gpu=placement.use_gpu, cpus_per_worker=placement.cpus_each,
    )
    directory = runs.run_dir(config)
    finished = runs.open_run(directory, recipe.name, config, fresh=fresh)
    if finished is not None:
        return finished
    if skipped:
        log.info(f"skipped {len(skipped)} unreadable files: listed in {runs.write_skipped(directory, skipped)}")
    data_ref = None if data is None else ray.put(data.to_numpy())  # decoded once; a node's workers share it
    del data
    log.info(
        f"training {config.epochs} epoch{'s' if config.epochs != 1 else ''} on {placement.count} worker(s) "
        f"({'GPU' if placement.use_gpu else f'{placement.cpus_each:g} CPU'} each) -> {directory}"
    )
    try:
        devices = launch_training(recipe, config, directory, placement, data=data_ref, stream=stream, verbose=verbose)
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C: Ray Train's own SIGINT handler aborts the run and calls sys.exit inside fit().
        done = runs.last_epoch(directory)
        raise KeyboardInterrupt(
            f"stopped after epoch {done} of {config.epochs}; rerun the same command to resume"
        ) from None
    return runs.finish_run(directory, recipe.name, config, devices)


def _prepare_stream(recipe: Recipe, config: TrainConfig, verbose: bool) -> tuple[Stream, list[tuple[str, str]]]:
    from cvray.classification.finetune import list_folder

    streaming.quiet_ray_data(verbose)
    files, skipped = streaming.check_files(list_folder(config), config.max_bad_share)
    stream = Stream(streaming.datasets(files, config.decode_size, config.seed), files.classes,
                    len(files.splits["train"]))
    return stream, skipped


def _log_data(config: TrainConfig, data: ImageClassData | None, stream: Stream | None, skipped: list) -> None:
    if data is not None:
        counts = f"{len(data.train_labels)} train / {len(data.test_labels)} test"
        classes, how = data.classes, data.source
    else:
        counts, classes, how = f"{stream.num_train} train", stream.classes, "streamed through Ray Data"
    bad = f"; skipped {len(skipped)} unreadable files" if skipped else ""
    log.info(f"data: {counts} images, {len(classes)} classes ({how}) from {config.data_dir}{bad}")
