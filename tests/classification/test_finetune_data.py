"""Fine-tuning's data without Ray: hotdog.zip's download (file-locked, SHA-1 checked, from a local
server), the archive guard, and the comparison table and picture of two runs."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest
from PIL import Image

from cvray.classification import runs
from cvray.classification.compare import table_lines, write_comparison
from cvray.classification.finetune import locate_data
from cvray.classification.metrics import EpochMetrics
from cvray.errors import DataError


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_default_folder_downloads_hotdog_once_and_checks_its_sha1(tmp_path, file_server):
    archive = zip_of({f"hotdog/{s}/{c}/0.png": png() for s in ("train", "test") for c in ("hotdog", "not-hotdog")})
    (file_server.folder / "hotdog.zip").write_bytes(archive)
    url, sha1, default = f"{file_server.url}/hotdog.zip", hashlib.sha1(archive).hexdigest(), tmp_path / "cache"
    root = locate_data(str(default), default_dir=str(default), url=url, sha1=sha1)
    assert root == str(default / "hotdog") and (default / "hotdog/test/not-hotdog/0.png").is_file()
    assert locate_data(str(default), default_dir=str(default), url=url, sha1=sha1) == root
    assert len(file_server.gets) == 1  # the second call finds the data
    with pytest.raises(DataError, match="sha1 .* instead of 0000"):
        locate_data(str(tmp_path / "other"), default_dir=str(tmp_path / "other"), url=url, sha1="0000")
    assert [p.name for p in (tmp_path / "other").iterdir()] == [".hotdog.lock"]  # nothing half-written


def test_only_the_default_folder_is_downloaded_into(tmp_path):
    with pytest.raises(DataError, match="not found"):
        locate_data(str(tmp_path / "mine"), default_dir=str(tmp_path / "cache"), url="http://127.0.0.1:1/x.zip",
                    sha1="0")


def test_archive_members_cannot_leave_the_folder(tmp_path, file_server):
    archive = zip_of({"hotdog/train/a/0.png": png(), "../evil.txt": b"x"})
    (file_server.folder / "evil.zip").write_bytes(archive)
    with pytest.raises(DataError, match="would land outside"):
        locate_data(str(tmp_path / "cache"), default_dir=str(tmp_path / "cache"), url=f"{file_server.url}/evil.zip",
                    sha1=hashlib.sha1(archive).hexdigest())
    assert not (tmp_path / "evil.txt").exists()


def test_comparison_table_and_picture_of_two_runs(tmp_path):
    def run(name, accs):
        rows = [EpochMetrics(epoch=i + 1, train_loss=1.0 / (i + 1), train_acc=a, test_acc=a, examples_per_sec=10.0,
                             train_examples=100, train_seconds=10.0, epoch_seconds=11.0) for i, a in enumerate(accs)]
        runs.write_epoch_files(str(tmp_path / name), rows)
        return str(tmp_path / name)

    summary = write_comparison(str(tmp_path / "cmp"), {"fine-tuned": run("a", [0.8, 0.9]), "scratch": run("b", [0.6])})
    assert [(s["run"], s["epochs"], s["test_acc"]) for s in summary] == [("fine-tuned", 2, 0.9), ("scratch", 1, 0.6)]
    assert (tmp_path / "cmp/compare.csv").read_text().count("\n") == 4  # header + 3 epoch rows
    assert Image.open(tmp_path / "cmp/compare.png").size[0] > 400
    lines = table_lines(summary)
    assert lines[0].split() == ["run", "epochs", "train", "loss", "train", "acc", "test", "acc"]
    assert lines[1].split()[-1] == "0.900" and lines[2].split()[0] == "scratch"
