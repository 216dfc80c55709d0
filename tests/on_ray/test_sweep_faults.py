"""A training sweep on a real two-node cluster (spread_cluster), run as a user runs it: its trials
train on both nodes, and when its driver is killed (SIGKILL of jobs/sweep_train.py) after a trial
finished, the same command keeps the finished trials and completes the rest."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import finished_trials
from test_multinode import cluster_processes, follow, run_job, start_job, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def test_a_killed_sweep_driver_resumes_keeping_finished_trials(spread_cluster, tmp_path, tiny_cifar):
    # Two trials at once, one worker each of 1.95 CPUs: two never fit on one 2-CPU node, so the
    # first two trials train on both nodes; the third waits for one of them.
    argv = ["--job", "cifar", "--data-dir", tiny_cifar, "--epochs", 1, "--batch-size", 16, "--train-samples", 64,
            "--test-samples", 16, "--precision", "fp32", "--param", "lr=1e-3|3e-3|1e-2", "--max-concurrent", 2,
            "--no-early-stop", "--storage-path", tmp_path / "runs", "--name", "s"]
    sweep, log = tmp_path / "runs" / "s", tmp_path / "job.log"
    workers: dict[int, int] = {}
    proc = start_job("sweep_train.py", argv, spread_cluster, log)
    try:
        wait_for(lambda: (sweep / "runs").is_dir() and finished_trials(sweep), proc, log, timeout_s=400,
                 poll=follow(spread_cluster, "RayTrainWorker", workers))
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: Ray ends its trials
        proc.wait(timeout=60)
    finally:
        stop(proc)
    assert len(set(workers.values())) == 2, workers  # trials trained on both nodes
    deadline = time.monotonic() + 120
    while cluster_processes(spread_cluster, "RayTrainWorker"):  # the dead driver's trials end
        assert time.monotonic() < deadline, "the dead driver's training workers still run"
        time.sleep(0.1)
    kept = finished_trials(sweep)
    assert 1 <= len(kept) < 3, kept

    code, console = run_job("sweep_train.py", argv, spread_cluster, log, timeout_s=400)
    assert code == 0, console[-3000:]
    assert "resuming sweep" in console
    rows = {Path(r["run_dir"]).name: r for r in pq.read_table(sweep / "trials.parquet").to_pylist()}
    assert len(rows) == 3 and {r["status"] for r in rows.values()} == {"finished"}, rows
    assert all(rows[t]["epochs"] == 1 for t in rows)
    assert {t: m for t, m in finished_trials(sweep).items() if t in kept} == kept  # finished trials untouched
