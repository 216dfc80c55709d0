"""Training sweeps on a real local Ray: a 3-trial learning-rate grid (one finishes, ASHA stops one,
one diverges and fails), the rerun that redoes nothing, the best command reproducing the best
trial, and refusals that exit 2 before any trial starts."""

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cvray.classification import runs

JOBS = Path(__file__).resolve().parents[2] / "jobs"
sys.path.insert(0, str(JOBS))
import sweep_train  # noqa: E402
import train_cifar  # noqa: E402
from conftest import write_cifar_parquet  # noqa: E402

pytestmark = pytest.mark.slow


def write_dark_bright(path: Path, n: int, seed: int) -> None:
    """CIFAR-format Parquet of two classes a model tells apart in one epoch: dark and bright noise."""
    rng = np.random.default_rng(seed)
    write_cifar_parquet(path, np.arange(n) % 2, lambda label: np.clip(
        (200 if label else 40) + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def easy_cifar(tmp_path_factory):
    folder = tmp_path_factory.mktemp("easy")
    write_dark_bright(folder / "train.parquet", 192, seed=1)
    write_dark_bright(folder / "test.parquet", 32, seed=2)
    return folder


def checkpoints(run_dir: str) -> list[Path]:
    return [p for p in Path(run_dir).glob("checkpoint_*") if p.is_dir()]


def _run(main, argv) -> int:
    from _common import run

    return run(main, [str(a) for a in argv])


def test_a_grid_finishes_stops_early_fails_and_resumes_without_redoing(ray_local, easy_cifar, tmp_path, capsys):
    # Grid order is trial order; one trial at a time on 2 CPUs, so 1e-9 reaches ASHA's first rung
    # after 1e-2 has (ASHA lets the first trial through), and 1e12 diverges in its first epoch.
    argv = ["--job", "cifar", "--data-dir", easy_cifar, "--epochs", 2, "--batch-size", 8, "--val-share", 0.25,
            "--precision", "fp32", "--param", "lr=1e-2|1e-9|1e12", "--storage-path", tmp_path, "--name", "s"]
    assert _run(sweep_train.main, argv) == 0
    out = capsys.readouterr().out
    sweep = tmp_path / "s"
    rows = {r["lr"]: r for r in pq.read_table(sweep / "trials.parquet").to_pylist()}
    assert set(rows) == {1e-2, 1e-9, 1e12}
    good, bad, nan = rows[1e-2], rows[1e-9], rows[1e12]
    assert (good["status"], good["epochs"]) == ("finished", 2) and good["best_val_acc"] > 0.9
    assert (bad["status"], bad["epochs"]) == ("early-stopped", 1)
    assert nan["status"] == "failed" and "diverged" in nan["error"] and nan["epochs"] == 0
    assert (sweep / "val_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (sweep / "trials.csv").read_text().count("\n") == 4
    # Trial folders are run folders: an early-stopped one holds its last epoch's model and checkpoint.
    model, info = runs.load_model(bad["run_dir"])
    assert info["epoch"] == 1 and info["config"]["lr"] == 1e-9
    assert len(checkpoints(bad["run_dir"])) == 1 and len(checkpoints(good["run_dir"])) == 1  # one kept per trial

    # The rerun resumes and redoes nothing (failed trials kept failed on request).
    stamps = {lr: Path(r["run_dir"], "metrics.parquet").stat().st_mtime for lr, r in rows.items() if r["epochs"]}
    assert _run(sweep_train.main, [*argv, "--no-retry-failed"]) == 0
    assert "resuming sweep" in capsys.readouterr().out
    again = {r["lr"]: r for r in pq.read_table(sweep / "trials.parquet").to_pylist()}
    assert {lr: r["status"] for lr, r in again.items()} == {lr: r["status"] for lr, r in rows.items()}
    assert stamps == {lr: Path(again[lr]["run_dir"], "metrics.parquet").stat().st_mtime for lr in stamps}

    # The printed best command trains the best trial's config on its own.
    command = next(line for line in out.splitlines() if line.startswith("train it on its own: "))
    best_argv = shlex.split(command.removeprefix("train it on its own: "))
    assert best_argv[:2] == ["python", "jobs/train_cifar.py"] and "--lr" in best_argv
    assert _run(train_cifar.main, best_argv[2:]) == 0
    best = json.loads((tmp_path / "s-best" / "config.json").read_text())
    trial = json.loads(Path(good["run_dir"], "config.json").read_text())
    ignored = {"name", "storage_path", "num_workers", "use_gpu", "cpus_per_worker"}
    assert {k: v for k, v in best.items() if k not in ignored} == {k: v for k, v in trial.items() if k not in ignored}
    torch.testing.assert_close(runs.read_metrics(str(tmp_path / "s-best"))[-1]["val_acc"], good["final_val_acc"])


@pytest.mark.parametrize("extra, words", [
    (["--param", "momentum=0.1|0.2"], "FIELD one of"),
    (["--param", "lr=fast|slow"], "is not a number"),
    (["--param", "lr=|"], "no values"),
    (["--param", "lr=1e-2..1e-4"], "0 < LOW <= HIGH"),
    (["--param", "lr=0..1e-2"], "0 < LOW <= HIGH"),
    (["--param", "lr=1e-4..1e-2", "--search", "grid"], "grid search needs values"),
    (["--param", "batch-size=8|x"], "is not a whole number"),
    (["--lr", "0.1", "--param", "lr=1e-3|1e-2"], "drop the fixed --lr"),
    (["--num-samples", "0", "--search", "random"], "--num-samples must be at least 1"),
    (["--num-workers", "1-2"], "fixed --num-workers"),
    (["--val-share", "0"], "--val-share must be above 0"),
    (["--num-workers", "3", "--cpus-per-worker", "1"], "one trial needs 3.05 CPUs"),
])
def test_bad_sweeps_exit_2_before_any_trial(ray_local, easy_cifar, tmp_path, capsys, extra, words):
    argv = ["--job", "cifar", "--data-dir", easy_cifar, "--storage-path", tmp_path, "--name", "bad", *extra]
    assert _run(sweep_train.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err
    assert not (tmp_path / "bad").exists()
