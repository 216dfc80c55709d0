"""Run folders: the files a training run leaves for its user. Plain Python + torch, no Ray.

Layout of ``STORAGE/NAME/`` (Ray Train also keeps its checkpoint_* folders there):

    config.json      the run's CifarTrainConfig (hyperparameters are checked on resume)
    metrics.csv      one row per epoch (rewritten whole each epoch, keyed by epoch)
    metrics.parquet  the same rows
    curves.png       train loss, train acc, test acc against epochs (the lab's animator)
    model.pt         final weights + config + classes (load with load_model)
    summary.json     the lab's closing numbers and where the run ran

Every file is written atomically (cvray.storage), so a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cvray import storage
from cvray.config import CifarTrainConfig
from cvray.errors import ConfigError, DataError

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_acc", "test_acc", "examples_per_sec",
    "train_examples", "train_seconds", "epoch_seconds",
)


def run_dir(config: CifarTrainConfig) -> str:
    return storage.join(config.storage_path, config.name or config.default_name())


def read_json(path: str) -> dict[str, Any] | None:
    if not storage.exists(path):
        return None
    try:
        return json.loads(storage.read_bytes(path))
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete it or use --fresh") from None


def write_json(path: str, data: dict[str, Any]) -> None:
    storage.write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_resumable(directory: str, config: CifarTrainConfig) -> CifarTrainConfig | None:
    """The config of an earlier run in `directory` (None if there is none).

    Raises ConfigError when its hyperparameters differ from `config`'s: resuming would mix two
    recipes in one model. Only epochs and where-it-runs settings may change.
    """
    saved = read_json(storage.join(directory, "config.json"))
    if saved is None:
        return None
    previous = CifarTrainConfig.from_dict(saved)
    old, new = previous.hyperparameters(), config.hyperparameters()
    changed = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in sorted(new) if old.get(k) != new[k]]
    if changed:
        raise ConfigError(
            f"run {directory} was started with other settings ({'; '.join(changed)}): "
            "use --fresh to start it over, or another --name"
        )
    return previous


def write_metrics(directory: str, history: list[dict[str, Any]]) -> None:
    """Write all epoch rows as CSV and Parquet (whole files, so a rerun epoch leaves one row)."""
    rows = sorted({int(r["epoch"]): r for r in history}.values(), key=lambda r: r["epoch"])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text_atomic(storage.join(directory, "metrics.csv"), text.getvalue())
    table = pa.table({c: [r[c] for r in rows] for c in METRIC_COLUMNS})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes_atomic(storage.join(directory, "metrics.parquet"), buffer.getvalue())


def read_metrics(directory: str) -> list[dict[str, Any]]:
    """The epoch rows written so far ([] if none)."""
    path = storage.join(directory, "metrics.parquet")
    if not storage.exists(path):
        return []
    table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
    return table.to_pylist()


def save_model(directory: str, state: dict[str, Any]) -> str:
    """Write model.pt: {"model": state_dict, "config": dict, "classes": [...], "epoch": int}."""
    payload = {k: state[k] for k in ("model", "config", "classes", "epoch")}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = storage.join(directory, "model.pt")
    storage.write_bytes_atomic(path, buffer.getvalue())
    return path


def load_model(path: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a run's final model for evaluation or prediction.

    `path` is a run folder or its model.pt (local or URI). Returns (model in eval mode on
    `device`, info) where info holds "config", "classes" and "epoch". The model takes float
    images (B, 3, 32, 32) in [0, 1] (no normalisation, as in training) and returns logits.
    """
    from cvray.classification.models import d2l_resnet18

    if not str(path).endswith(".pt"):
        path = storage.join(path, "model.pt")
    try:
        payload = torch.load(io.BytesIO(storage.read_bytes(path)), map_location=device, weights_only=True)
        model = d2l_resnet18(num_classes=len(payload["classes"]))
        model.load_state_dict(payload["model"])
    except DataError:
        raise
    except Exception as exc:  # unpickling / key mismatches: say which file
        raise DataError(f"{path} is not a cvray model file ({str(exc).splitlines()[0]})") from None
    model.to(device).eval()
    return model, {k: payload[k] for k in ("config", "classes", "epoch")}
