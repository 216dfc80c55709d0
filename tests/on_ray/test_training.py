"""End to end: jobs/train_cifar.py on a real local Ray, 2 workers, a few hundred synthetic images."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import train_cifar
from PIL import Image

import _common
from cvray.classification.datasets import DeviceDataset
from cvray.classification.engine import evaluate
from cvray.classification.runs import load_model, read_metrics
from cvray.classification.transforms import to_unit_float

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def job(argv) -> int:
    """Run the job in this process (sharing the test Ray) as its command line would: exit code."""
    return _common.run(train_cifar.main, argv)


def job_args(data, storage, *extra):
    return ["--data-dir", str(data), "--storage-path", str(storage), "--no-gpu", "--batch-size", "64", *extra]


@pytest.mark.slow
def test_train_resume_report_and_refuse_changed_hyperparameters(ray_local, tiny_cifar, tmp_path, capsys):
    args = job_args(tiny_cifar, tmp_path, "--name", "run", "--num-workers", "2")
    assert job(args + ["--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "loss " in out and ", train acc " in out and ", test acc " in out
    assert "examples/sec on [cpu, cpu]" in out
    run = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "metrics.parquet", "curves.png", "model.pt", "summary.json"):
        assert (run / name).is_file(), name
    first = read_metrics(str(run))
    assert [r["epoch"] for r in first] == [1, 2]
    assert all(r["train_examples"] == 128 for r in first)  # 2 workers x 64-sample shards
    assert (run / "metrics.csv").read_text().count("\n") == 3  # header + one row per epoch
    assert Image.open(run / "curves.png").size[0] > 300
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["devices"] == ["cpu", "cpu"]
    # A one-machine Ray started by cvray has no node to preempt: no watcher actor was started.
    import ray

    started = {a["ActorClassName"] for a in ray._private.state.actors().values()}
    assert "TrainController" in started and "PreemptionWatcher" not in started, started

    # The saved model is the one that produced the last epoch's test accuracy.
    model, info = load_model(str(run))
    assert info["epoch"] == 2 and len(info["classes"]) == 10
    from cvray.classification.cifar import load_cifar10

    arrays = load_cifar10(str(tiny_cifar), download=False)
    test = DeviceDataset(arrays.test_images, arrays.test_labels)
    correct = evaluate(model, test.batches(torch.arange(len(test)), 32), to_unit_float)["correct"]
    assert correct / len(test) == pytest.approx(summary["test_acc"])

    # A larger --epochs resumes: epochs 1-2 are not trained again, epoch 3 is added.
    assert job(args + ["--epochs", "3"]) == 0
    assert "resuming run" in capsys.readouterr().out
    resumed = read_metrics(str(run))
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert resumed[:2] == first
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3

    # The same command on a finished run just reports it.
    assert job(args + ["--epochs", "3"]) == 0
    assert "already has 3 epochs" in capsys.readouterr().out

    # Another learning rate under the same name is refused, and nothing is touched.
    config_before = (run / "config.json").read_bytes()
    assert job(args + ["--epochs", "3", "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--fresh" in err and "lr 0.001 -> 0.01" in err
    assert (run / "config.json").read_bytes() == config_before

    # --fresh reaches the run folder's lifecycle (tests/classification/test_runs.py covers a fresh
    # start; here, without another fit: a folder that is no run is never deleted).
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "mine.txt").write_text("keep")
    fresh_args = job_args(tiny_cifar, tmp_path, "--name", "notarun", "--epochs", "1", "--fresh")
    assert job(fresh_args) == 2
    assert "not a cvray run folder" in capsys.readouterr().err
    assert (tmp_path / "notarun" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-workers", "2", "--batch-size", "63"], "not divisible by 2 workers"),
        (["--gpu"], "no GPUs"),
        (["--num-workers", "3", "--batch-size", "63"], "need 3 CPUs"),
    ],
)
def test_bad_placement_is_one_line_and_writes_nothing(ray_local, tiny_cifar, tmp_path, capsys, extra, message):
    args = ["--data-dir", str(tiny_cifar), "--storage-path", str(tmp_path / "runs"), "--epochs", "1", *extra]
    assert job(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_bad_data_is_one_line_and_writes_nothing(ray_local, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"pixels": [b"x"], "label": [1]}), data / "train.parquet")
    pq.write_table(pa.table({"pixels": [b"x"], "label": [1]}), data / "test.parquet")
    args = job_args(data, tmp_path / "runs", "--epochs", "1")
    assert job(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "image" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["--epochs", "0"], "must be a positive integer"),
        (["--aug", "flip,zoom"], "unknown augmentation 'zoom'"),
    ],
)
def test_cli_errors_exit_2_with_one_line(tmp_path, argv, message):
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", "train_cifar.py"), "--storage-path", str(tmp_path), *argv],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_documents_every_flag():
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", "train_cifar.py"), "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0
    for flag in ("--address", "--num-workers", "--gpu", "--no-gpu", "--precision", "--seed", "--epochs",
                 "--batch-size", "--lr", "--aug", "--data-dir", "--storage-path", "--name", "--fresh",
                 "--max-failures", "--smoke-test", "--verbose"):
        assert flag in proc.stdout, flag
    assert "(default: None)" not in proc.stdout
    parser = train_cifar.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:  # each default is stated once, by the help text or by argparse
        assert formatter._get_help_string(action).count("default") <= 1, action.option_strings


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(ray_local, tiny_cifar, tmp_path):
    """SIGINT (Ctrl-C) during training: exit code 130, one line naming the last finished epoch,
    a run folder holding exactly those epochs plus a checkpoint to resume from, and each finished
    epoch's line once on the console. The job's
    own Ray runs next to the test session's, and no traceback may come from either (Ray Train's
    placement-group cleaner used to fail on "multiple active Ray instances").

    The console is a pipe, not a terminal, so the same run shows what a user sees there: the
    worker's epoch lines arrive bare (no "(RayTrainWorker pid=...)" prefix, no colour codes), and
    Ray's token-auth WARNING is gone (one job run for both: each costs a Ray start and a fit)."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_COLOR_PREFIX", "RAY_DISABLE_WORKER_LOG_PREFIX")}
    env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, os.path.join(REPO, "jobs", "train_cifar.py"), *job_args(tiny_cifar, tmp_path),
            "--name", "ctrlc", "--epochs", "100", "--cpus-per-worker", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    run = tmp_path / "ctrlc"
    try:
        # Epoch 1's row and its checkpoint (rank 0 writes the row, then Ray Train copies the
        # checkpoint, ~130 MB of model and Adam state: an interrupt in between has nothing to resume).
        def checkpointed() -> bool:
            return bool(read_metrics(str(run))) and any(p.name.startswith("checkpoint_") for p in run.iterdir())

        deadline = time.time() + 240
        while not checkpointed() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert checkpointed(), "epoch 1 never finished"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    done = [r["epoch"] for r in read_metrics(str(run))]
    assert done == list(range(1, len(done) + 1)) and len(done) < 100
    assert err.strip().splitlines()[-1] == (
        f"interrupted: stopped after epoch {done[-1]} of 100; rerun the same command to resume"
    )
    assert "Traceback" not in err
    assert any(p.name.startswith("checkpoint_") for p in run.iterdir())
    # The worker's epoch lines reach the job's console once each (logged, not printed twice); the
    # line of the epoch the interrupt followed may still have been in flight.
    for epoch in done:
        shown = sum(line.startswith(f"epoch {epoch}/100: loss ") for line in out.splitlines())
        assert shown == 1 or (epoch == done[-1] and shown == 0), out
    assert not any(f"epoch {epoch}/100: loss" in line and not line.startswith("epoch ")
                   for line in out.splitlines() for epoch in done), out  # bare, at the start of the line
    console = out + err
    assert "\x1b[" not in console and "pid=" not in console, console
    assert "Token authentication" not in console, console


@pytest.mark.parametrize(
    "interrupt, line",
    [
        (KeyboardInterrupt(), "interrupted: rerun the same command to resume"),
        (KeyboardInterrupt("stopped after epoch 3 of 10; rerun the same command to resume"),
         "interrupted: stopped after epoch 3 of 10; rerun the same command to resume"),
    ],
)
def test_interrupt_is_exit_130_with_one_line(capsys, interrupt, line):
    def main(argv):
        raise interrupt

    assert _common.run(main, []) == 130
    assert capsys.readouterr().err == line + "\n"
