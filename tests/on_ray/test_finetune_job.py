"""jobs/finetune.py end to end on a real local Ray: 2 workers through both data paths (held in
memory, streamed through Ray Data) at 64 px on a tiny labelled folder of mixed images with bad
files; resume by name; every bad input is one line and exit code 2 with nothing written."""

from __future__ import annotations

import csv
import json

import finetune
import predict
import pytest
import torch

import _common
from cvray.classification.runs import load_model, read_metrics

FAST = ["--scratch", "--crop-size", "64", "--batch-size", "16", "--no-gpu", "--num-workers", "2"]


def job(argv) -> int:
    return _common.run(finetune.main, [str(a) for a in argv])


def check_run(run, epochs: int) -> None:
    rows = read_metrics(str(run))
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert all(r["train_examples"] == 64 for r in rows)  # 2 classes x 32 good train images, no bad ones
    assert rows[-1]["test_acc"] >= 0.75, rows  # dark/horizontal vs bright/vertical: far above chance (0.5)
    with open(run / "skipped_files.csv") as f:
        skipped = sorted(r["file"].rsplit("/", 1)[-1] for r in csv.DictReader(f))
    assert skipped == ["corrupt.jpg", "notes.txt"]
    model, info = load_model(str(run))
    assert info["arch"] == "resnet18" and info["classes"] == ["bright", "dark"]
    assert info["transform"] == {"preset": "crop", "crop_size": 64, "normalization": "imagenet"}
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2)


@pytest.mark.slow
def test_two_workers_hold_the_folder_in_memory_and_resume_by_name(ray_local, tiny_folder, tmp_path, capsys):
    args = ["--data-dir", tiny_folder, "--storage-path", tmp_path, "--name", "mem", "--data-path", "memory", *FAST]
    assert job([*args, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "64 train / 32 test images, 2 classes" in out and "skipped 2 unreadable files" in out
    assert "examples/sec on [cpu, cpu]" in out
    first = read_metrics(str(tmp_path / "mem"))
    assert job([*args, "--epochs", "2"]) == 0  # the same name: resumes from epoch 1's checkpoint
    assert "resuming run" in capsys.readouterr().out
    check_run(tmp_path / "mem", 2)
    assert read_metrics(str(tmp_path / "mem"))[0] == first[0]
    config = json.loads((tmp_path / "mem" / "config.json").read_text())
    assert config["recipe"] == "finetune" and config["decode_size"] == 82 and config["lr"] == 5e-4
    # predict.py with the trained run over the test split reproduces the run's test accuracy: the
    # same decode size and evaluation transform, read from model.pt.
    assert _common.run(predict.main, ["--run", str(tmp_path / "mem"), "--input", str(tiny_folder / "test"),
                                      "--output", str(tmp_path / "pred"), "--num-actors", "1"]) == 0
    accuracy = json.loads((tmp_path / "pred" / "accuracy.json").read_text())
    assert accuracy["images"] == 32
    assert accuracy["accuracy"] == pytest.approx(read_metrics(str(tmp_path / "mem"))[-1]["test_acc"])


@pytest.mark.slow
def test_two_workers_stream_the_folder_through_ray_data(ray_local, tiny_folder, tmp_path, capsys):
    assert job(["--data-dir", tiny_folder, "--storage-path", tmp_path, "--name", "stream", "--epochs", "2",
                "--data-path", "stream", *FAST]) == 0
    assert "64 train images, 2 classes (streamed through Ray Data)" in capsys.readouterr().out
    check_run(tmp_path / "stream", 2)


def layout(root, files: set[str]) -> None:
    from PIL import Image

    for rel in files:
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)


@pytest.mark.parametrize("files, extra, words", [
    ({"train/a/x.png", "train/b/y.png"}, [], "no test/ folder"),
    ({"train/a/x.png", "train/b/y.png", "test/a/x.png"}, [], "class 'b' has no test/ folder"),
    ({"train/a/x.png", "test/a/x.png"}, [], "1 class folder(s) found"),
    ({"train/a/x.png", "train/b/", "test/a/x.png", "test/b/y.png"}, [], "empty class"),
    ({"train/a/x.png", "train/b/y.png", "test/a/x.png", "test/b/y.png", "train/b/z.png"}, ["--max-bad-share", "0"],
     None),
])
def test_bad_folders_are_one_line_errors(tmp_path, capsys, files, extra, words):
    data = tmp_path / "data"
    layout(data, files)
    if words is None:  # a corrupt file over --max-bad-share 0
        (data / "train/b/z.png").write_bytes(b"broken")
        words = "1 of 3 files"
    code = job(["--data-dir", data, "--storage-path", tmp_path / "runs", "--crop-size", "8", "--scratch", *extra])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_bad_flags_and_starting_points_are_one_line_errors(tmp_path, tiny_folder, capsys):
    cifar_run = tmp_path / "cifar"
    from cvray.classification.models import d2l_resnet18
    from cvray.classification.runs import save_model

    save_model(str(cifar_run), {"model": d2l_resnet18(num_classes=3).state_dict(), "config": {}, "epoch": 1,
                                "classes": ["a", "b", "c"], "arch": "d2l_resnet18", "transform": {"preset": "cifar"}})
    base = ["--data-dir", tiny_folder, "--storage-path", tmp_path / "runs"]
    for argv, words in [
        (["--init-from", cifar_run, "--arch", "resnet18"], "conflicts with --init-from"),
        (["--weights", tmp_path / "none.pth"], "file not found"),
        (["--init-from", tmp_path / "nowhere"], "not found"),
        (["--compare", "--scratch"], "drop --scratch"),
        (["--data-dir", tmp_path / "missing"], "not found"),
        (["--crop-size", "64", "--decode-size", "32", "--scratch"], "smaller than --crop-size"),
    ]:
        code = job([*base, *argv])
        err = capsys.readouterr().err
        assert code == 2 and words in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "runs").exists()
