"""Training survives what kills it: a worker process killed mid-run (CIFAR and fine-tuning,
--max-failures 1), a worker node killed under a fixed and an elastic worker count. Each job runs as
its own process (as `python jobs/...` would) on a real Ray; the fault is injected when the job's
console shows epoch 1's line (printed once that epoch's checkpoint is registered), so the run is
then inside epoch 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ClusterProcess

from cvray.classification.runs import read_metrics

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 600


def run_job(script: str, args: list, *, on_line: Callable[[str], None] | None = None,
            env: dict | None = None) -> tuple[int, str]:
    """Run jobs/<script> with `args` to the end, calling on_line(line) for each console line; the
    exit code and the whole console output (stdout and stderr)."""
    full_env = {**os.environ, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / script), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)
        return proc.wait(timeout=JOB_TIMEOUT_S), "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def once_at(marker: str, action: Callable[[], None]) -> Callable[[str], None]:
    """on_line for run_job: `action()` the first time a line contains `marker`."""
    done = []

    def on_line(line: str) -> None:
        if not done and marker in line:
            done.append(True)
            action()

    return on_line


def kill_a_training_worker() -> None:
    """SIGKILL a live Ray Train worker of the Ray this test process is joined to (ray_local), found
    in the GCS's actor table (the State API would need the dashboard, whose port may be taken)."""
    import ray

    pids = [a["Pid"] for a in ray._private.state.actors().values()
            if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"]
    assert pids, "no live training worker to kill"
    os.kill(pids[0], signal.SIGKILL)


def check_recovered(out: str, run: Path, epochs: int, failures: int = 1) -> None:
    """Every epoch shows once and has one metrics row; the recovery is one line per failure, no
    traceback; the tracebacks are in the run folder's train.log."""
    for epoch in range(1, epochs + 1):
        assert len(re.findall(rf"epoch {epoch}/{epochs}: loss", out)) == 1, out
    resumed = re.findall(r"training worker rank \d+ [^\n]*(?:died|was lost|lost its peers)[^\n]*; resuming from "
                         rf"the checkpoint after epoch (\d) \(failure 1 of {failures}; details in train\.log\)", out)
    assert len(resumed) == 1 and 1 <= int(resumed[0]) < epochs, out
    assert "Traceback" not in out and "Graceful shutdown" not in out, out
    assert [r["epoch"] for r in read_metrics(str(run))] == list(range(1, epochs + 1))
    assert json.loads((run / "summary.json").read_text())["epochs"] == epochs
    log = (run / "train.log").read_text()
    assert "Traceback" in log and "RayTrainWorker" in log


@pytest.mark.slow
def test_cifar_worker_killed_mid_run_resumes_from_its_checkpoint(ray_local, tiny_cifar, tmp_path):
    args = ["--address", ray_local, "--data-dir", tiny_cifar, "--storage-path", tmp_path, "--name", "run",
            "--train-samples", "32", "--test-samples", "16", "--no-gpu", "--num-workers", "1", "--batch-size", "16",
            "--epochs", "3", "--max-failures", "1"]
    code, out = run_job("train_cifar.py", args, on_line=once_at("epoch 1/3: loss",
                                                                 kill_a_training_worker))
    assert code == 0, out
    check_recovered(out, tmp_path / "run", 3)
    assert "test acc" in out.splitlines()[-2]  # the lab's closing lines


@pytest.mark.slow
@pytest.mark.heavy
def test_finetune_worker_killed_mid_run_resumes_from_its_checkpoint(ray_local, tiny_folder, tmp_path):
    args = ["--address", ray_local, "--data-dir", tiny_folder, "--storage-path", tmp_path, "--name", "run",
            "--scratch", "--crop-size", "32", "--train-samples", "32", "--test-samples", "16", "--no-gpu",
            "--num-workers", "1", "--batch-size", "16", "--epochs", "3", "--max-failures", "1"]
    code, out = run_job("finetune.py", args, on_line=once_at("epoch 1/3: loss",
                                                             kill_a_training_worker))
    assert code == 0, out
    check_recovered(out, tmp_path / "run", 3)


@pytest.fixture(scope="module")
def damageable_cluster():
    """A head with no CPUs (the driver's and Ray Train controller's node, never killed) and two
    worker nodes of 1 CPU each, one of which the test kills."""
    cluster = ClusterProcess(0, [1, 1])
    yield cluster
    cluster.close()


# A worker group that cannot be placed is given up after 3 tries of this many seconds (60 by default).
PLACEMENT_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "5"}


@pytest.mark.slow
@pytest.mark.heavy
def test_node_killed_stops_a_fixed_count_and_an_elastic_range_carries_on(damageable_cluster, tiny_cifar, tmp_path):
    cluster = damageable_cluster
    common = ["--address", cluster.address, "--data-dir", tiny_cifar, "--storage-path", tmp_path, "--no-gpu",
              "--cpus-per-worker", "1", "--batch-size", "16", "--train-samples", "64", "--test-samples", "16",
              "--epochs", "3", "--max-failures", "1"]

    def kill_node():
        return once_at("epoch 1/3: loss", lambda: cluster.kill_node())

    # Two workers, one per node: the node of one dies in epoch 2. The restart cannot place two
    # workers on the one node left: the job stops with one line; the epoch-1 checkpoint is kept.
    fixed = [*common, "--name", "fixed", "--num-workers", "2"]
    code, out = run_job("train_cifar.py", fixed, on_line=kill_node(), env=PLACEMENT_ENV)
    assert code == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors == [errors[0]] and "cannot place the worker group (2 workers x 1 CPU)" in errors[0], out
    assert "rerun the same command to resume" in errors[0] and "Traceback" not in out, out
    stopped_after = int(re.search(r"stopped after epoch (\d)", errors[0]).group(1))
    assert stopped_after >= 1
    assert [r["epoch"] for r in read_metrics(str(tmp_path / "fixed"))] == list(range(1, stopped_after + 1))

    # The node is back: the same command resumes after that epoch and finishes.
    cluster.add_node(1)
    code, out = run_job("train_cifar.py", fixed)
    assert code == 0, out
    assert "resuming run" in out and "epoch 1/3: loss" not in out, out
    assert [r["epoch"] for r in read_metrics(str(tmp_path / "fixed"))] == [1, 2, 3]

    # An elastic range: a node dies in epoch 2 and training carries on with the worker left.
    elastic = [*common, "--name", "elastic", "--num-workers", "1-2"]
    code, out = run_job("train_cifar.py", elastic, on_line=kill_node())
    assert code == 0, out
    assert "training 3 epochs on 1-2 worker(s)" in out
    check_recovered(out, tmp_path / "elastic", 3)
    rows = read_metrics(str(tmp_path / "elastic"))
    assert rows[0]["train_examples"] == rows[-1]["train_examples"] == 64  # every image, on 2 workers then 1
    assert json.loads((tmp_path / "elastic" / "summary.json").read_text())["devices"] == ["cpu"]


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_train_tracebacks_go_to_the_run_log_and_stay_off_the_console_unless_verbose(tmp_path, verbose):
    import logging

    from cvray.on_ray.training import RUN_LOG, route_tracebacks_to_run_log

    logger = logging.getLogger("ray.train")
    shown = []
    handler = logging.StreamHandler()
    handler.emit = lambda record: shown.append(record.getMessage())  # what the console would print
    logger.addHandler(handler)
    try:
        route_tracebacks_to_run_log(str(tmp_path), verbose)
        route_tracebacks_to_run_log(str(tmp_path), verbose)  # idempotent: one filter
        assert len(handler.filters) == 1
        child = logging.getLogger("ray.train.v2.some_callback")
        try:
            raise RuntimeError("the backend is gone")
        except RuntimeError:
            child.warning("Graceful shutdown of backend failed.", exc_info=True)
        child.error("Error in training function:\nTraceback (most recent call last):\n  ...\nValueError: x")
        child.warning("a plain warning")
    finally:
        logger.removeHandler(handler)
    kept = ["Graceful shutdown of backend failed.", "Error in training function:"] if verbose else []
    assert [m.split("\n")[0] for m in shown] == [*kept, "a plain warning"]
    log = (tmp_path / RUN_LOG).read_text()
    assert "RuntimeError: the backend is gone" in log and "ValueError: x" in log and "a plain warning" in log


def test_a_failure_is_named_by_rank_pid_and_cause():
    from cvray.on_ray.training import describe_failure

    died = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: RayTrainWorker\n"
                        "\tpid: 4242\n\tip: 10.0.0.7")
    assert describe_failure({1: died}) == "training worker rank 1 (pid 4242) died"
    peer = RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer.")
    assert describe_failure({0: peer}) == "training worker rank 0 lost its peers (another worker or its node died)"
    failed = ValueError("Traceback ...\nValueError: shape")
    assert describe_failure({0: failed}) == "training worker rank 0 failed: ValueError: shape"
