"""The training path is generic: a recipe that is not cvray's (torchvision ResNet-18 at 32 px, two
SGD parameter groups) trains through the same per-worker and launch functions as the CIFAR job,
on a real two-node Ray, and its workers' epoch and progress lines reach the driver's console once
each although no worker runs on the driver's node."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvray.classification.runs import load_model, read_metrics

DRIVER = Path(__file__).with_name("recipe_driver.py")


@pytest.mark.slow
def test_second_recipe_trains_through_the_shared_path_on_two_nodes(two_node_cluster, tiny_cifar, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, str(DRIVER), "--address", two_node_cluster, "--data-dir", str(tiny_cifar),
         "--storage-path", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("SUMMARY "))
    run = Path(summary["run_dir"])
    assert summary["recipe"] == "test-resnet18-sgd" and summary["devices"] == ["cpu", "cpu"]

    # Worker lines (epoch, and progress after every step with progress_every_s=0) reach the
    # driver's console exactly once each, from the worker node.
    lines = proc.stdout.splitlines()
    epoch_lines = [line for line in lines if re.search(r"epoch 1/1: loss ", line)]
    progress = [line for line in lines if re.search(r"epoch 1/1: \d+% \(", line)]
    assert len(epoch_lines) == 1, proc.stdout
    assert len(progress) == 2 and len(set(progress)) == 2, proc.stdout  # 64 images per worker, batch 32
    assert "images), loss " in progress[-1] and "(128/128 images)" in progress[-1]

    (row,) = read_metrics(str(run))
    assert row["epoch"] == 1 and row["train_examples"] == 128
    assert json.loads((run / "config.json").read_text())["recipe"] == "test-resnet18-sgd"
    model, info = load_model(str(run))
    assert info["arch"] == "resnet18" and isinstance(model, torch.nn.Module)
    assert type(model).__module__.startswith("torchvision") and model.fc.out_features == 10
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)  # torchvision's ResNet at 32 px
    checkpoint = max(p for p in run.glob("checkpoint_*") if p.is_dir())
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([0.02, 0.2])  # body, head at 10x
    head_params = {id(p) for p in model.fc.parameters()}
    assert len(groups[1]["params"]) == len(head_params) == 2  # fc weight and bias
