"""Every job submitted through the real `ray job submit` CLI to a local cluster with token auth
(cluster/local/start.sh), at smoke size, all at once: each ends SUCCEEDED with its artifacts in the
cluster's shared storage; a bad flag ends FAILED with the job's one line last in `ray job logs`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from conftest import REPO_ROOT, finished_trials, image_writer, write_labelled_folder, write_parquet_split
from local_cluster import all_pids, cmdline, session_members

pytestmark = pytest.mark.slow
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _submit(cluster, name: str, script: str, *args) -> str:
    """`ray job submit --no-wait` from the repository root (its upload is what .rayignore leaves)."""
    job_id = f"{name}-{uuid.uuid4().hex[:8]}"
    entry = [sys.executable, f"jobs/{script}", *(str(a) for a in args)]
    proc = subprocess.run(["ray", "job", "submit", "--address", cluster.dashboard, "--submission-id", job_id,
                           "--working-dir", ".", "--no-wait", "--", *entry],
                          cwd=REPO_ROOT, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return job_id


def _wait(cluster, job_ids, timeout_s: float = 900) -> dict[str, str]:
    """Poll until every job is SUCCEEDED, FAILED or STOPPED; their statuses by id."""
    from ray.job_submission import JobSubmissionClient

    token = (cluster.state / "auth_token").read_text().strip()  # this process's Ray is not in token mode
    client = JobSubmissionClient(cluster.dashboard, headers={"Authorization": f"Bearer {token}"})
    deadline, status = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        status = {job: str(client.get_job_status(job).value) for job in job_ids}
        if set(status.values()) <= TERMINAL:
            return status
        time.sleep(3)
    return status


def _logs(cluster, job_id: str) -> str:
    proc = subprocess.run(["ray", "job", "logs", "--address", cluster.dashboard, job_id], env=cluster.env,
                          capture_output=True, text=True, timeout=120)
    return proc.stdout


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny inputs for every job, outside the upload: CIFAR Parquet, a labelled folder, photos."""
    root = tmp_path_factory.mktemp("submit_inputs")
    (root / "cifar").mkdir()
    write_parquet_split(root / "cifar" / "train.parquet", 64, seed=1)
    write_parquet_split(root / "cifar" / "test.parquet", 32, seed=2)
    write_labelled_folder(root / "folder", {"train": 16, "test": 12})  # 1 bad file in each: under 10%
    rgb, save = image_writer(root / "photos")
    for i in range(3):
        save(f"in/p{i}.png", rgb(40, 32))
    save("content.png", rgb(48, 32))
    save("style.png", rgb(48, 32))
    return root


@pytest.mark.heavy
def test_every_job_succeeds_through_ray_job_submit(token_cluster, inputs):
    runs, photos = token_cluster.storage, inputs / "photos"
    # CPUs per worker/actor explicit: the jobs' defaults size them from the whole cluster's CPUs,
    # which no single node has (docs/cluster_local.md).
    cifar = ["--data-dir", inputs / "cifar", "--no-gpu", "--epochs", "1", "--batch-size", "16",
             "--cpus-per-worker", "1"]
    style = ["--weights", "random", "--precision", "fp32", "--no-gpu"]
    jobs = {
        "train": _submit(token_cluster, "train", "train_cifar.py", *cifar, "--storage-path", runs,
                         "--name", "cifar", "--num-workers", "1"),
        "finetune": _submit(token_cluster, "finetune", "finetune.py", "--data-dir", inputs / "folder", "--scratch",
                            "--crop-size", "32", "--batch-size", "8", "--no-gpu", "--num-workers", "1",
                            "--cpus-per-worker", "1", "--epochs", "1", "--storage-path", runs, "--name", "ft"),
        "sweep_train": _submit(token_cluster, "sweep-train", "sweep_train.py", "--job", "cifar", *cifar,
                               "--precision", "fp32", "--param", "lr=1e-2|1e-3", "--storage-path", runs,
                               "--name", "st"),
        "sweep_style": _submit(token_cluster, "sweep-style", "sweep_style.py", "--content", photos / "content.png",
                               "--style", photos / "style.png", "--arch", "vgg16", "--shape", "32x48",
                               "--iterations", "3", "--param", "style-weight=0.01|1", *style,
                               "--storage-path", runs, "--name", "ss"),
        "stylize": _submit(token_cluster, "stylize", "stylize_folder.py", "--input", photos / "in",
                           "--output", runs / "styled", "--style", photos / "style.png", "--size", "32",
                           "--iterations", "2", "--num-actors", "1", "--cpus-per-actor", "1", *style),
        "bad": _submit(token_cluster, "bad", "train_cifar.py", "--epochs", "0", "--storage-path", runs),
    }
    status = _wait(token_cluster, list(jobs.values()))
    failed = {name: "\n".join(_logs(token_cluster, jobs[name]).strip().splitlines()[-6:]) for name in jobs
              if name != "bad" and status.get(jobs[name]) != "SUCCEEDED"}
    assert not failed, "\n\n".join(f"{name}:\n{text}" for name, text in failed.items())

    bad_log = _logs(token_cluster, jobs["bad"])
    assert status[jobs["bad"]] == "FAILED"
    assert bad_log.strip().splitlines()[-1].endswith("must be a positive integer, got 0 (see --help)")
    assert "Traceback" not in bad_log

    assert (runs / "cifar" / "model.pt").is_file() and (runs / "cifar" / "metrics.csv").is_file()
    assert (runs / "ft" / "model.pt").is_file()
    assert (runs / "st" / "trials.parquet").is_file() and (runs / "ss" / "trials.parquet").is_file()
    assert sorted(p.stem for p in (runs / "styled").rglob("*.png")) == ["p0", "p1", "p2"]

    # predict needs a trained run: the fine-tuned one, on its own test images.
    predict = _submit(token_cluster, "predict", "predict.py", "--run", runs / "ft",
                      "--input", inputs / "folder" / "test", "--output", runs / "pred", "--num-actors", "1",
                      "--cpus-per-actor", "1", "--no-gpu")
    assert _wait(token_cluster, [predict]) == {predict: "SUCCEEDED"}, _logs(token_cluster, predict)[-3000:]
    assert any((runs / "pred").rglob("*.parquet")) or any((runs / "pred").rglob("*.csv"))


def _stop(cluster, job_id: str) -> None:
    proc = subprocess.run(["ray", "job", "stop", "--address", cluster.dashboard, job_id], env=cluster.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _wait_until(predicate, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(1)


@pytest.mark.heavy
def test_ray_job_stop_then_the_same_submission_resumes(token_cluster, tmp_path):
    """`ray job stop` of a training job after its first epoch, of a bulk job after its first image
    and of a sweep after its first trial; the same submission again finishes each: every epoch
    once, every image once, every trial once, the finished ones skipped."""
    import pyarrow.parquet as pq

    from cvray.classification.runs import read_metrics

    runs = token_cluster.storage
    (tmp_path / "cifar").mkdir()
    write_parquet_split(tmp_path / "cifar" / "train.parquet", 384, seed=1)
    write_parquet_split(tmp_path / "cifar" / "test.parquet", 32, seed=2)
    rgb, save = image_writer(tmp_path / "photos")
    for i in range(6):
        save(f"in/p{i}.png", rgb(48, 40))
    save("style.png", rgb(48, 32))
    train = ("train_cifar.py", "--data-dir", tmp_path / "cifar", "--no-gpu", "--epochs", "3", "--batch-size", "16",
             "--cpus-per-worker", "1", "--num-workers", "1", "--precision", "fp32", "--storage-path", runs,
             "--name", "stopped-cifar")
    bulk = ("stylize_folder.py", "--input", tmp_path / "photos" / "in", "--output", runs / "stopped-styled",
            "--style", tmp_path / "photos" / "style.png", "--size", "40", "--iterations", "40", "--num-actors", "1",
            "--cpus-per-actor", "1", "--weights", "random", "--precision", "fp32", "--no-gpu")
    # One trial at a time, two epochs each: the first trial finishes while the second has work left.
    sweep_dir = runs / "stopped-sweep"
    sweep = ("sweep_train.py", "--job", "cifar", "--data-dir", tmp_path / "cifar", "--no-gpu", "--epochs", "2",
             "--batch-size", "16", "--train-samples", "64", "--test-samples", "16", "--cpus-per-worker", "1",
             "--precision", "fp32", "--param", "lr=1e-3|3e-3", "--max-concurrent", "1", "--no-early-stop",
             "--storage-path", runs, "--name", sweep_dir.name)
    jobs = {"train": train, "bulk": bulk, "sweep": sweep}
    first = {name: _submit(token_cluster, name, *args) for name, args in jobs.items()}
    _wait_until(lambda: len(read_metrics(str(runs / "stopped-cifar"))) >= 1)
    _stop(token_cluster, first["train"])
    _wait_until(lambda: any((runs / "stopped-styled" / "_cvray").rglob("*.parquet")))
    _stop(token_cluster, first["bulk"])
    _wait_until(lambda: (sweep_dir / "runs").is_dir() and finished_trials(sweep_dir))
    _stop(token_cluster, first["sweep"])
    status = _wait(token_cluster, list(first.values()))
    assert set(status.values()) == {"STOPPED"}, status
    stopped_at = len(read_metrics(str(runs / "stopped-cifar")))
    assert stopped_at < 3, stopped_at
    kept = finished_trials(sweep_dir)
    assert len(kept) == 1, kept

    again = {name: _submit(token_cluster, name, *args) for name, args in jobs.items()}
    status = _wait(token_cluster, list(again.values()))
    assert set(status.values()) == {"SUCCEEDED"}, {k: _logs(token_cluster, v)[-2000:] for k, v in again.items()}
    assert "resuming sweep" in _logs(token_cluster, again["sweep"])
    trials = pq.read_table(sweep_dir / "trials.parquet").to_pylist()
    assert len(trials) == 2 and {t["status"] for t in trials} == {"finished"}, trials
    assert all(t["epochs"] == 2 for t in trials), trials
    assert {t: m for t, m in finished_trials(sweep_dir).items() if t in kept} == kept  # the finished trial untouched
    assert "resum" in _logs(token_cluster, again["train"])
    assert [m["epoch"] for m in read_metrics(str(runs / "stopped-cifar"))] == [1, 2, 3]
    bulk_log = _logs(token_cluster, again["bulk"])
    skipped = int(bulk_log.split("skipped ")[-1].split(",")[0])
    assert skipped >= 1, bulk_log
    rows = pq.read_table(runs / "stopped-styled" / "_cvray" / "manifest.parquet").to_pylist()
    assert len(rows) == 6 and len({r["input"] for r in rows}) == 6, rows
    assert sorted(p.stem for p in (runs / "stopped-styled").glob("*.png")) == [f"p{i}" for i in range(6)]


def test_stop_ends_exactly_the_processes_it_started(token_cluster, ray_local):
    """Last in this file (it stops the session's cluster): cluster/local/stop.sh ends every process
    of the nodes it started and no other Ray's (ray_local, the session's own Ray, is one)."""
    ours = session_members(token_cluster.sids)
    assert len(ours) >= 6  # two `ray start`, GCS, dashboard, two raylets, ...
    others = {pid for pid in all_pids() if "ray" in cmdline(pid)} - ours
    proc = token_cluster.stop()
    assert proc.returncode == 0, proc.stderr
    assert session_members(token_cluster.sids) == set()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in ours)
    survivors = {pid for pid in others if os.path.exists(f"/proc/{pid}")}
    # Every other Ray's daemons are still there (short-lived workers may end on their own).
    daemons = {pid for pid in others if any(n in cmdline(pid) for n in ("gcs_server", "raylet"))}
    assert daemons and daemons <= survivors
