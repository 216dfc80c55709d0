"""Run folders without Ray: the lifecycle (new, resume, finished, --fresh), per-epoch files, model.pt."""

from __future__ import annotations

import io
import json

import pytest
import torch

from cvray.classification import runs
from cvray.classification.config import CifarTrainConfig
from cvray.classification.metrics import METRIC_COLUMNS, EpochMetrics
from cvray.classification.models import d2l_resnet18
from cvray.errors import ConfigError, DataError


def row(epoch: int, loss: float = 1.0) -> EpochMetrics:
    return EpochMetrics(epoch=epoch, train_loss=loss, train_acc=0.5, test_acc=0.4, examples_per_sec=100.0,
                        train_examples=128, train_seconds=1.28, epoch_seconds=1.5)


def test_epoch_rows_are_keyed_by_epoch_and_the_columns_are_the_typed_keys(tmp_path):
    directory = str(tmp_path / "run")
    runs.write_epoch_files(directory, [row(1), row(2, loss=0.9)])
    runs.write_epoch_files(directory, [row(1), row(2, loss=0.9), row(2, loss=0.8)])  # epoch 2 ran twice
    rows = runs.read_metrics(directory)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["train_loss"] == 0.8
    assert (tmp_path / "run/metrics.csv").read_text().splitlines()[0] == ",".join(METRIC_COLUMNS)
    assert (tmp_path / "run/curves.png").read_bytes()[:4] == b"\x89PNG"
    assert runs.last_epoch(directory) == 2 and runs.last_epoch(str(tmp_path / "none")) == 0


def test_lifecycle_new_resume_finished_refused_fresh(tmp_path):
    config = CifarTrainConfig(storage_path=str(tmp_path), name="r", epochs=2)
    directory = runs.run_dir(config)
    assert runs.open_run(directory, "cifar10", config) is None  # new: train
    assert json.loads((tmp_path / "r/config.json").read_text())["recipe"] == "cifar10"
    runs.write_epoch_files(directory, [row(1)])
    assert runs.open_run(directory, "cifar10", config.replace(num_workers=4)) is None  # resume: train on
    runs.write_epoch_files(directory, [row(1), row(2)])
    runs.save_model(directory, {"model": {}, "config": {}, "classes": [], "epoch": 2})
    summary = runs.finish_run(directory, "cifar10", config, ["cpu"])
    finished = runs.open_run(directory, "cifar10", config)  # finished: just report
    assert finished["epochs"] == 2 and finished["test_acc"] == summary["test_acc"] == 0.4
    assert runs.open_run(directory, "cifar10", config.replace(epochs=3)) is None  # more epochs: train on
    with pytest.raises(ConfigError, match=r"lr 0.001 -> 0.01.*--fresh"):
        runs.open_run(directory, "cifar10", config.replace(lr=0.01))
    with pytest.raises(ConfigError, match="recipe 'cifar10' -> 'other'"):
        runs.open_run(directory, "other", config)
    assert runs.open_run(directory, "cifar10", config.replace(lr=0.01), fresh=True) is None
    assert runs.read_metrics(directory) == [] and not (tmp_path / "r/model.pt").exists()


def test_fresh_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r/precious.txt").write_text("mine")
    config = CifarTrainConfig(storage_path=str(tmp_path), name="r")
    with pytest.raises(ConfigError, match="not a cvray run folder"):
        runs.open_run(runs.run_dir(config), "cifar10", config, fresh=True)
    assert (tmp_path / "r/precious.txt").exists()


def test_model_files_load_with_their_architecture_and_refuse_garbage(tmp_path):
    torch.manual_seed(0)
    net = d2l_resnet18(num_classes=3)
    old_style = {"model": net.state_dict(), "config": {}, "classes": ["a", "b", "c"], "epoch": 1}  # no arch
    runs.save_model(str(tmp_path), old_style)
    model, info = runs.load_model(str(tmp_path))
    assert info["arch"] == "d2l_resnet18" and info["transform"] == {"preset": "cifar"}
    assert info["classes"] == ["a", "b", "c"]
    probe = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(probe), net.eval()(probe))
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(DataError, match="bad.pt is not a cvray model file"):
        runs.load_model(str(tmp_path / "bad.pt"))
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "classes": ["a"], "config": {}, "epoch": 1}, buffer)  # wrong head
    (tmp_path / "head.pt").write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="head.pt is not a cvray model file"):
        runs.load_model(str(tmp_path / "head.pt"))
