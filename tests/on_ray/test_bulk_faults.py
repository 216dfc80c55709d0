"""Faults injected into the folder jobs on a real two-node cluster (spread_cluster), each job run
as a user runs it (a subprocess with --address): a stylisation actor and a predict actor killed
mid-run, the bulk job's driver killed and the command rerun (the S3 emulator stopped and started
again during a run is test_multinode's, in its S3 run). Every wait is for a marker (a manifest
part, a console line, an actor process), bounded in time; the outcome: every good image present
once and whole, recorded once."""

from __future__ import annotations

import os
import signal
import time

import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_multinode import (
    STYLE_FAST,
    cluster_processes,
    manifest_rows,
    run_job,
    start_job,
    stop,
    style_image,  # noqa: F401 - a fixture
    wait_for,
    write_images,
)

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

SLOW_STYLE = [*STYLE_FAST, "--iterations", "10", "--batch-size", "1"]
"""Work per image (ten steps, one image at a time) so that a run still has images to do when its first lands."""
STYLE_ACTOR, PREDICT_ACTOR = "MapBatches(StylizeActor)", "MapBatches(PredictActor)"


def done_parts(out) -> set[str]:
    """Files recorded done by a manifest part not merged yet (parts are written atomically)."""
    found = set()
    for path in (out / "_cvray" / "parts").glob("*.parquet"):
        found |= {r["relpath"] for r in pq.read_table(path).to_pylist() if r["status"] == "done"}
    return found


def outputs(out) -> dict[str, int]:
    """relative path -> inode of every output image (whole: each one decodes to the end)."""
    found = {}
    for path in out.rglob("*.png"):
        if "_cvray" not in path.parts:
            with Image.open(path) as img:
                img.load()
            found[str(path.relative_to(out))] = path.stat().st_ino
    return found


def test_a_killed_actor_then_a_killed_driver_lose_and_repeat_nothing(spread_cluster, tmp_path,
                                                                     style_image):  # noqa: F811
    """One run, two faults (one cluster run fewer for CI): a stylisation actor killed while it
    works is redone in a new pipeline; then the driver killed, and the same command rerun does
    only what was missing."""
    rels = write_images(tmp_path / "in", 8)
    out, log = tmp_path / "out", tmp_path / "job.log"
    argv = ["--input", tmp_path / "in", "--output", out, "--style", style_image, *SLOW_STYLE]
    proc = start_job("stylize_folder.py", argv, spread_cluster, log)
    try:
        wait_for(lambda: (out / "_cvray" / "parts").is_dir() and done_parts(out), proc, log)
        # Every stylisation actor at once: the pipeline cannot finish without one, so the loss is
        # always seen (a single killed actor may be one that has no work left, which Ray Data
        # drops silently while the other finishes the run).
        actors = cluster_processes(spread_cluster, STYLE_ACTOR)
        assert actors, "no stylisation actor to kill"
        for pid in actors:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: "attempt 2 of 3" in log.read_text() and len(done_parts(out)) >= 2, proc, log)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: Ray ends its job's actors
        proc.wait(timeout=60)
    finally:
        stop(proc)
    console = log.read_text()
    assert "a Ray worker died (The actor died" in console and "Traceback" not in console, console
    deadline = time.monotonic() + 120  # Ray ends a dead driver's actors: wait for that, bounded
    while cluster_processes(spread_cluster, STYLE_ACTOR):
        assert time.monotonic() < deadline, "the dead driver's actors still run"
        time.sleep(0.1)
    finished = done_parts(out)
    before = outputs(out)
    assert set(before) >= finished  # an image is written before its part
    assert 2 <= len(finished) < len(rels), finished

    code, console = run_job("stylize_folder.py", argv, spread_cluster, log)
    assert code == 0, console
    assert f"done {len(rels) - len(finished)}, skipped {len(finished)}, failed 0," in console
    assert "constructor arguments in the object store" not in console and "Traceback" not in console
    after = outputs(out)
    assert sorted(after) == sorted(rels)
    assert all(after[rel] == before[rel] for rel in finished)  # finished images untouched
    rows = manifest_rows(out / "_cvray" / "manifest.parquet")  # each file once
    assert sorted(rows) == sorted(rels) and {r["status"] for r in rows.values()} == {"done"}
    assert not list((out / "_cvray" / "parts").iterdir())


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, tiny_cifar):
    """A CIFAR run folder (the lab's recipe, one step on 32 tiny images), as test_predict makes it."""
    from cvray.classification import runs
    from cvray.classification.cifar import load_cifar10
    from cvray.classification.config import CifarTrainConfig
    from cvray.classification.recipes import CifarRecipe
    from cvray.classification.worker import fit

    config = CifarTrainConfig(data_dir=str(tiny_cifar), epochs=1, batch_size=32, train_samples=32, test_samples=16,
                              precision="fp32", eval_batch_size=32)
    data = load_cifar10(str(tiny_cifar), download=False, train_samples=32, test_samples=16)
    folder = tmp_path_factory.mktemp("runs") / "cifar"
    runs.save_model(str(folder), fit(CifarRecipe(), config, data, "cpu").state_dict())
    return folder


def test_predict_actors_spread_over_both_nodes_and_one_killed_loses_nothing(spread_cluster, tmp_path, cifar_run):
    rels = write_images(tmp_path / "in", 24)
    out, log = tmp_path / "out", tmp_path / "job.log"
    proc = start_job("predict.py", ["--run", cifar_run, "--input", tmp_path / "in", "--output", out,
                                    "--batch-size", "1"], spread_cluster, log)
    try:
        actors = wait_for(lambda: (lambda found: found if len(found) == 2 else None)(
            cluster_processes(spread_cluster, PREDICT_ACTOR)), proc, log)
        assert len(set(actors.values())) == 2, actors  # one actor on each node
        os.kill(min(actors), signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, log.read_text()
    finally:
        stop(proc)
    console = log.read_text()
    assert "Traceback" not in console and "constructor arguments in the object store" not in console, console
    rows = manifest_rows(out / "_cvray" / "manifest.parquet")  # each file once
    assert sorted(rows) == sorted(rels) and {r["status"] for r in rows.values()} == {"done"}
    predictions = pq.read_table(out / "predictions.parquet").to_pylist()
    assert len(predictions) == len(rels)
