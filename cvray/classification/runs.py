"""Run folders: the files a training run leaves for its user, and the run's lifecycle (new,
resumed, finished, --fresh). Plain Python + torch, no Ray.

Layout of ``STORAGE/NAME/`` (Ray Train also keeps its checkpoint_* folders there):

    config.json      the run's config and recipe (hyperparameters are checked on resume)
    metrics.csv      one row per epoch (rewritten whole each epoch, keyed by epoch)
    metrics.parquet  the same rows
    curves.png       train loss, train acc, test acc against epochs (the lab's animator)
    model.pt         final weights + config + classes + architecture (load with load_model)
    summary.json     the lab's closing numbers and where the run ran
    skipped_files.csv  unreadable input files left out (file, reason), when there were any

Every file is written atomically (cvray.storage), so a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cvray import names, plots, storage
from cvray.classification.config import TrainConfig
from cvray.classification.metrics import METRIC_COLUMNS, EpochMetrics, RunSummary, epoch_row, summarize
from cvray.errors import ConfigError, DataError, first_line

log = logging.getLogger(__name__)

MODEL_KEYS = ("model", "config", "classes", "epoch", "recipe", "arch", "transform", "decode_size")


def run_dir(config: TrainConfig) -> str:
    """The run's folder: --storage-path joined with a checked name (ConfigError for a name that could
    leave --storage-path or confuse a file system, before anything is written or --fresh deletes)."""
    return storage.join(config.storage_path, names.check_name(config.name or config.default_name()))


def absolute(path: str) -> str:
    """A local storage path made absolute (workers may start in another folder); URIs unchanged."""
    return path if storage.is_uri(path) else os.path.abspath(os.path.expanduser(path))


def read_json(path: str) -> dict[str, Any] | None:
    if not storage.exists(path):
        return None
    try:
        return json.loads(storage.read_bytes(path))
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete it or use --fresh") from None


def write_json(path: str, data: dict[str, Any]) -> None:
    storage.write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------ lifecycle


def open_run(directory: str, recipe_name: str, config: TrainConfig, *, fresh: bool = False) -> RunSummary | None:
    """Get `directory` ready for training `config`; None means "train", a summary means the run
    is finished already (nothing to do but report it).

    fresh: delete an earlier run there first. Otherwise an earlier run is resumed when its
    recipe and hyperparameters match (ConfigError when they do not: resuming would mix two
    recipes in one model). Writes config.json.
    """
    if fresh:
        remove_run(directory)
    elif check_resumable(directory, recipe_name, config) is not None:
        done = finished_summary(directory, config)
        if done is not None:
            log.info(f"run {directory} already has {done['epochs']} epochs: reporting its results")
            return done
        log.info(f"resuming run {directory}")
    # Credentials a URI carries (s3://KEY:SECRET@bucket) never reach the run folder; resuming compares
    # hyperparameters only, which hold no URIs.
    write_json(storage.join(directory, "config.json"), names.redact_values({**config.to_dict(), "recipe": recipe_name}))
    return None


def check_resumable(directory: str, recipe_name: str, config: TrainConfig) -> TrainConfig | None:
    """The config of an earlier run in `directory` (None if there is none); ConfigError when its
    recipe or hyperparameters differ from `config`'s. Only epochs and where it runs may change."""
    saved = read_json(storage.join(directory, "config.json"))
    if saved is None:
        return None
    previous = type(config).from_dict(saved)
    old, new = previous.hyperparameters(), config.hyperparameters()
    old["recipe"], new["recipe"] = saved.get("recipe", "cifar10"), recipe_name
    changed = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in sorted(new) if old.get(k) != new[k]]
    if changed:
        raise ConfigError(
            f"run {directory} was started with other settings ({'; '.join(changed)}): "
            "use --fresh to start it over, or another --name"
        )
    return previous


def finished_summary(directory: str, config: TrainConfig) -> RunSummary | None:
    """The run's summary if it has trained config.epochs epochs and saved its model, else None."""
    summary = read_json(storage.join(directory, "summary.json"))
    if summary and summary.get("epochs", 0) >= config.epochs and storage.exists(storage.join(directory, "model.pt")):
        return RunSummary(**summary)
    return None


def remove_run(directory: str) -> None:
    """--fresh: delete an earlier run, but only a folder that is recognisably a run folder."""
    if not storage.exists(directory):
        return
    if not storage.exists(storage.join(directory, "config.json")):
        raise ConfigError(f"--fresh: {directory} exists but is not a cvray run folder; not deleting it")
    storage.remove_tree(directory)


def finish_run(directory: str, recipe_name: str, config: TrainConfig, devices: Sequence[str]) -> RunSummary:
    """Write summary.json from the metrics written so far; returns it."""
    summary = summarize(read_metrics(directory))
    summary.update(devices=list(devices), run_dir=directory, recipe=recipe_name, config=config.to_dict())
    write_json(storage.join(directory, "summary.json"), dict(summary))
    return summary


def write_skipped(directory: str, skipped: Sequence[tuple[str, str]]) -> str:
    """skipped_files.csv: every input file left out of the run, with the reason; its path."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(("file", "reason"))
    writer.writerows(skipped)
    path = storage.join(directory, "skipped_files.csv")
    storage.write_text_atomic(path, text.getvalue())
    return path


def last_epoch(directory: str) -> int:
    """The last epoch whose metrics are written (0 if none)."""
    return max((r["epoch"] for r in read_metrics(directory)), default=0)


# ------------------------------------------------------------------ per-epoch files


def write_epoch_files(directory: str, history: Sequence[EpochMetrics]) -> None:
    """metrics.csv, metrics.parquet and curves.png from every epoch so far. Whole files, keyed by
    epoch: an epoch that runs twice (after a lost report) leaves one row."""
    rows = sorted({int(r["epoch"]): epoch_row(r) for r in history}.values(), key=lambda r: r["epoch"])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text_atomic(storage.join(directory, "metrics.csv"), text.getvalue())
    table = pa.table({c: [r[c] for r in rows] for c in METRIC_COLUMNS})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes_atomic(storage.join(directory, "metrics.parquet"), buffer.getvalue())
    plots.write_curves(storage.join(directory, "curves.png"), rows, directory.rstrip("/").rsplit("/", 1)[-1])


def read_metrics(directory: str) -> list[EpochMetrics]:
    """The epoch rows written so far ([] if none)."""
    path = storage.join(directory, "metrics.parquet")
    if not storage.exists(path):
        return []
    table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
    return [epoch_row(row) for row in table.to_pylist()]


# ------------------------------------------------------------------ the trained model


def save_model(directory: str, state: dict[str, Any]) -> str:
    """Write model.pt: the MODEL_KEYS of a WorkerRun.state_dict() (no optimiser)."""
    payload = {k: state[k] for k in MODEL_KEYS if k in state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = storage.join(directory, "model.pt")
    storage.write_bytes_atomic(path, buffer.getvalue())
    return path


def load_model(path: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a run's final model for evaluation or prediction.

    `path` is a run folder or its model.pt (local or URI). Returns (model in eval mode on
    `device`, info) where info holds "config", "classes", "epoch", "recipe", "arch",
    "transform": the input the model expects, as keyword arguments of cvray.classification.
    transforms.eval_transform (the CIFAR lab's: {"preset": "cifar"}, 32x32 floats in [0, 1]), and
    for runs that decoded photos once, "decode_size" (their shorter side, px).
    """
    from cvray.classification.models import build_model

    if not str(path).endswith(".pt"):
        path = storage.join(path, "model.pt")
    try:
        payload = torch.load(io.BytesIO(storage.read_bytes(path)), map_location=device, weights_only=True)
        payload.setdefault("arch", "d2l_resnet18")  # model.pt files from before recipes
        payload.setdefault("recipe", "cifar10")
        payload.setdefault("transform", {"preset": "cifar"})
        model = build_model(payload["arch"], num_classes=len(payload["classes"]))
        model.load_state_dict(payload["model"])
    except DataError:
        raise
    except Exception as exc:  # unpickling / key mismatches: say which file
        raise DataError(f"{path} is not a cvray model file ({first_line(exc)})") from None
    model.to(device).eval()
    return model, {k: payload[k] for k in MODEL_KEYS if k != "model" and k in payload}
