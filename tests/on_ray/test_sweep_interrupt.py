"""Ctrl-C on a training sweep: the job stops with exit code 130 and one line saying how to resume;
the same command then finishes the interrupted trial from its checkpoint, each epoch once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cvray.classification import runs

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sweep_train import write_dark_bright  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def _wait_for(predicate, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {proc.returncode}) before the wait was over:\n"
                                 f"{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the sweep's first epoch")
        time.sleep(0.2)


def test_ctrl_c_stops_with_a_resume_line_and_the_rerun_finishes(ray_local, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_dark_bright(data / "train.parquet", 192, seed=1)
    write_dark_bright(data / "test.parquet", 32, seed=2)
    argv = [sys.executable, "jobs/sweep_train.py", "--job", "cifar", "--address", ray_local,
            "--data-dir", str(data), "--epochs", "2", "--batch-size", "8", "--val-share", "0.25",
            "--precision", "fp32", "--param", "lr=1e-2", "--storage-path", str(tmp_path), "--name", "s"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def first_epoch_done() -> bool:
        return any(len(runs.read_metrics(str(d))) >= 1
                   for d in (tmp_path / "s" / "runs").glob("trial-*") if (d / "metrics.parquet").exists())

    _wait_for(first_epoch_done, proc, timeout_s=240)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the foreground process
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    # One line says how to resume (Ray's own log lines from other processes may still follow it).
    assert "interrupted: rerun the same command to resume the sweep" in out.splitlines(), out
    assert "Traceback" not in out, out

    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming sweep" in rerun.stdout
    (row,) = pq.read_table(tmp_path / "s" / "trials.parquet").to_pylist()
    assert (row["status"], row["epochs"]) == ("finished", 2)
    # Resumed from its checkpoint: every epoch's row once, in order.
    assert [m["epoch"] for m in runs.read_metrics(row["run_dir"])] == [1, 2]
