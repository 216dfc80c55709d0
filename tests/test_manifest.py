"""The folder job's manifest: parts, merging, the resume plan (no Ray)."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from cvray import folders, manifest
from cvray.errors import DataError


def test_manifest_parts_merge_and_retry_replaces(tmp_path):
    out = folders.open_folder(str(tmp_path / "out"))
    now = manifest.now_utc()
    manifest.write_manifest_part(out, {"relpath": "a.png", "status": "failed", "error": "x", "run_id": "r1",
                                       "finished_at": now})
    manifest.write_manifest_part(out, {"relpath": "b.png", "status": "done", "loss_curve": [3.0, 2.0],
                                      "run_id": "r1", "finished_at": now})
    records, parts = manifest.read_manifest_state(out)
    assert sorted(records) == ["a.png", "b.png"] and len(parts) == 2
    manifest.write_manifest(out, list(records.values()), parts)
    assert not os.listdir(tmp_path / "out/_cvray/parts")
    manifest.write_manifest_part(out, {"relpath": "a.png", "status": "done", "run_id": "r2",
                                       "finished_at": manifest.now_utc()})  # the retry of a.png
    records, parts = manifest.read_manifest_state(out)
    assert records["a.png"]["status"] == "done" and records["b.png"]["loss_curve"] == [3.0, 2.0]
    manifest.write_manifest(out, list(records.values()), parts)
    table = pq.read_table(tmp_path / "out/_cvray/manifest.parquet")
    assert table.column("relpath").to_pylist() == ["a.png", "b.png"]
    assert table.column("run_id").to_pylist() == ["r2", "r1"]
    assert (tmp_path / "out/_cvray/manifest.csv").read_text().startswith('"relpath","input"')


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    out = folders.open_folder(str(tmp_path / "out"))
    (tmp_path / "out/_cvray").mkdir(parents=True)
    (tmp_path / "out/_cvray/manifest.parquet").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read the manifest"):
        manifest.read_manifest_state(out)




def test_record_keys_are_the_schema_columns():
    assert list(manifest.ManifestRecord.__annotations__) == manifest.MANIFEST_SCHEMA.names
