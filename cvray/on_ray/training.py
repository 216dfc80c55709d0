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
import re
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any

import ray.train
import torch
from ray.train.torch import TorchTrainer

from cvray import console, storage
from cvray.classification import runs
from cvray.classification.config import TrainConfig
from cvray.classification.datasets import ImageClassData
from cvray.classification.metrics import ProgressSums, RunSummary
from cvray.classification.recipes import Recipe
from cvray.classification.worker import WorkerRun
from cvray.errors import ConfigError, CvrayError, root_cause_line
from cvray.on_ray import streaming
from cvray.on_ray.connect import check_reachable, connect
from cvray.on_ray.placement import Placement, check_global_batch, plan_workers
from cvray.on_ray.storage_check import check_storage_visible
from cvray.on_ray.streaming import StreamSource

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
CHECKPOINTS_KEPT = 2
PLACEMENT_TRIES = 3
"""Attempts to place a worker group (each waits RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by
default) before the run stops; on an autoscaling cluster a group waits up to ~3 minutes for nodes."""
RUN_LOG = "train.log"
"""The run folder's log of failures: every worker error and Ray Train warning, tracebacks included."""


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
    route_tracebacks_to_run_log(directory, loop_config.get("verbose", False))
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
            # A barrier: every worker reports once per epoch. The epoch line is RunEvents' (Ray
            # Train's controller logs it once the checkpoint is registered, so it shows once).
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


class RunEvents(ray.train.UserCallback):
    """What a run's user sees of Ray Train's controller: one epoch line per registered checkpoint
    and one line per recovered failure; the tracebacks go to the run folder's RUN_LOG.

    Ray Train calls it in its controller process (which logs to the driver's console). Logging the
    epoch line there, after Ray has registered that epoch's checkpoint, means a rerun epoch (a
    worker killed after its report but before the controller saw it) never shows twice.
    """

    def __init__(self, directory: str, epochs: int, max_failures: int, *, start_epoch: int = 0,
                 verbose: bool = False):
        self.directory, self.epochs, self.max_failures, self.verbose = directory, epochs, max_failures, verbose
        self.checkpointed = start_epoch  # the epoch a restart resumes after
        self.failures = 0

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self._install_console_filter()
        row = metrics[0] if metrics else {}
        if checkpoint is not None and "epoch" in row:
            self.checkpointed = int(row["epoch"])
            log.info(console.epoch_line(row, self.epochs))

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        self._install_console_filter()
        self.failures += 1
        what = describe_failure(worker_exceptions)
        _append_run_log(self.directory, "".join(
            f"worker rank {rank}:\n" + "".join(traceback.format_exception(exc))
            for rank, exc in sorted(worker_exceptions.items())))
        if self.failures <= self.max_failures:  # else fit() raises: the driver's error line says it
            log.warning(f"{what}; resuming from the checkpoint after epoch {self.checkpointed} "
                        f"(failure {self.failures} of {self.max_failures}; details in {RUN_LOG})")

    def _install_console_filter(self) -> None:
        """Done from a hook, not __init__: Ray configures the controller's logging after
        unpickling this callback."""
        console.configure_logging()
        route_tracebacks_to_run_log(self.directory, self.verbose)


def route_tracebacks_to_run_log(directory: str, verbose: bool) -> None:
    """Ray Train logs a recovered failure with tracebacks: its controller ("Graceful shutdown of
    backend failed ...", 24 lines) and the surviving workers ("Error in training function", their
    collective torn down by the dead peer). Route them into the run log, and off the console unless
    --verbose; the job's own one line says what happened. Call once Ray has set up this process's
    logging (idempotent)."""
    for handler in logging.getLogger("ray.train").handlers:
        if _is_console(handler) and not any(isinstance(f, _TracebacksToRunLog) for f in handler.filters):
            handler.addFilter(_TracebacksToRunLog(directory, keep_on_console=verbose))


def describe_failure(worker_exceptions: dict[int, Exception]) -> str:
    """E.g. "training worker rank 1 (pid 4242) died" or "training worker rank 0 failed: ValueError: x"."""
    parts = []
    for rank, exc in sorted(worker_exceptions.items()):
        text = str(exc)
        pid = re.search(r"\bpid: (\d+)", text)
        where = f"training worker rank {rank}" + (f" (pid {pid.group(1)})" if pid else "")
        if re.search(r"gloo|nccl|connection (closed|reset) by peer", text, re.I):
            parts.append(f"{where} lost its peers (another worker or its node died)")
        elif "unavailable" in text.lower() or "ActorUnavailable" in type(exc).__name__:
            parts.append(f"{where} was lost (its node died or cannot be reached)")
        elif "died" in text or "ActorDied" in type(exc).__name__ or "ActorDied" in text:
            node = " (its node died)" if re.search(r"node .*(died|dead)|NODE_DIED|raylet", text, re.I) else ""
            parts.append(f"{where} died{node}")
        else:
            parts.append(f"{where} failed: {root_cause_line(exc)}")
    return "; ".join(parts) or "the worker group failed"


class _TracebacksToRunLog(logging.Filter):
    """On a console handler: WARNING and above also go to the run log; records that carry a
    traceback stay off the console unless kept."""

    def __init__(self, directory: str, *, keep_on_console: bool):
        super().__init__()
        self.directory, self.keep = directory, keep_on_console

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        _append_run_log(self.directory, f"{record.levelname} {record.name}: {text}\n")
        return self.keep or not (record.exc_info or "Traceback (most recent call last)" in text)


def _is_console(handler: logging.Handler) -> bool:
    return type(handler).__name__ == "PlainRayHandler" or (
        isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler))


def _append_run_log(directory: str, text: str) -> None:
    """Append to the run folder's RUN_LOG (rare events: a whole-file rewrite is fine, and works on
    URIs too). Never raises: a log that cannot be written must not stop a recovery."""
    path = storage.join(directory, RUN_LOG)
    try:
        old = storage.read_bytes(path).decode() if storage.exists(path) else ""
        storage.write_text_atomic(path, f"{old}--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{text}")
    except Exception as exc:  # noqa: BLE001 - see above
        log.debug(f"could not write {path}: {exc}")


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
    events = RunEvents(directory, config.epochs, config.max_failures, start_epoch=runs.last_epoch(directory),
                       verbose=verbose)
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
            num_workers=placement.count if placement.min_count is None else (placement.min_count, placement.count),
            use_gpu=placement.use_gpu,
            resources_per_worker={"CPU": placement.cpus_each, **({"GPU": 1} if placement.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=config.name, storage_path=config.storage_path, callbacks=[events, *(callbacks or [])],
            # Ray retries a worker group it cannot place forever by default (-1): a fixed count on a
            # cluster that lost a node would wait for good. PLACEMENT_TRIES bounds it.
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures,
                                                   controller_failure_limit=PLACEMENT_TRIES - 1),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=checkpoints_kept),
            # Quiet by default: our per-epoch line is the progress; Ray Train's INFO lines (two per
            # epoch, with the whole metrics dict) would bury it. Warnings and errors still show.
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
    )
    try:
        result = trainer.fit()
    except (ray.train.TrainingFailedError, ray.train.ControllerError) as exc:
        if "WorkerGroupStartup" in type(getattr(exc, "controller_failure", None)).__name__:
            raise TrainingFailed(_unplaced_line(placement, runs.last_epoch(directory))) from None
        cause = root_cause_line(exc)
        hint = "" if "diverged" in cause else "; rerun the same command to resume"  # a rerun would diverge again
        raise TrainingFailed(f"training failed: {cause}{hint}") from None
    metrics = result.metrics or {}
    devices = str(metrics.get("devices", "")).split(",") if metrics.get("devices") else []
    return devices or ["cpu"] * placement.count


def _unplaced_line(placement: Placement, epoch: int) -> str:
    need = f"{placement.count} workers x {'1 GPU' if placement.use_gpu else f'{placement.cpus_each:g} CPU'}"
    return (f"training stopped after epoch {epoch}: the cluster cannot place the worker group ({need}) after "
            f"{PLACEMENT_TRIES} tries of {_start_timeout_s():g} s; rerun the same command to resume once it has "
            "room, or use --num-workers MIN-MAX to carry on with the workers that fit")


def _start_timeout_s() -> float:
    from ray.train.v2._internal import constants

    return float(os.environ.get(constants.WORKER_GROUP_START_TIMEOUT_S_ENV_VAR,
                                constants.DEFAULT_WORKER_GROUP_START_TIMEOUT_S))


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
    check_storage_visible(runs.absolute(config.storage_path))
    placement = plan_workers(cluster, config.num_workers, config.use_gpu, config.cpus_per_worker,
                             leave_cpus_for_tasks=streams, min_workers=config.min_workers)
    check_global_batch(config.batch_size, placement)
    stream, skipped = (_prepare_stream(recipe, config, verbose) if streams else (None, data.skipped))
    _log_data(config, data, stream, skipped)
    config = config.replace(
        name=config.name or config.default_name(), storage_path=runs.absolute(config.storage_path),
        num_workers=placement.count, min_workers=placement.min_count, use_gpu=placement.use_gpu,
        cpus_per_worker=placement.cpus_each,
    )
    directory = runs.run_dir(config)
    finished = runs.open_run(directory, recipe.name, config, fresh=fresh)
    if finished is not None:
        return finished
    if skipped:
        log.info(f"skipped {len(skipped)} unreadable files: listed in {runs.write_skipped(directory, skipped)}")
    data_ref = None if data is None else ray.put(data.to_numpy())  # decoded once; a node's workers share it
    del data
    workers = placement.count if placement.min_count is None else f"{placement.min_count}-{placement.count}"
    log.info(
        f"training {config.epochs} epoch{'s' if config.epochs != 1 else ''} on {workers} worker(s) "
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
