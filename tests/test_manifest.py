"""The folder jobs' manifest: parts, merging, the resume plan, one kind per job (no Ray)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cvray import folders, manifest
from cvray.classification.predict import PREDICT_MANIFEST
from cvray.errors import DataError

KINDS = [manifest.STYLIZE_MANIFEST, PREDICT_MANIFEST]


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


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_each_kind_record_keys_are_its_schema_columns(kind):
    assert list(kind.record.__annotations__) == kind.schema.names
    for base in manifest.BASE_COLUMNS:  # what the shared planning and merging read
        assert kind.schema.field(base.name).type == base.type
    assert ("output" in kind.schema.names) == kind.per_file_outputs
    assert all(not pa.types.is_nested(kind.schema.field(c).type) for c in kind.csv_columns)


def test_the_bulk_manifest_keeps_its_columns():
    """Generalising the manifest left the bulk job's files as they were (columns, order, CSV)."""
    assert manifest.STYLIZE_MANIFEST.schema is manifest.MANIFEST_SCHEMA
    assert manifest.MANIFEST_SCHEMA.names == [
        "relpath", "input", "output", "status", "error", "width", "height", "input_width", "input_height",
        "input_bytes", "loss_content", "loss_style", "loss_tv", "loss_total", "loss_curve", "seconds",
        "batch_images", "run_id", "node", "finished_at"]
    assert manifest.CSV_COLUMNS == [n for n in manifest.MANIFEST_SCHEMA.names if n != "loss_curve"]


def test_a_kind_needs_the_base_columns():
    with pytest.raises(ValueError, match="needs the column run_id"):
        manifest.ManifestKind("x", pa.schema([f for f in manifest.BASE_COLUMNS if f.name != "run_id"]), dict)
    with pytest.raises(ValueError, match="output string column"):
        manifest.ManifestKind("x", manifest.BASE_COLUMNS, dict, per_file_outputs=True)


def test_predict_kind_parts_merge_with_list_columns(tmp_path):
    out = folders.open_folder(str(tmp_path / "out"))
    kind = PREDICT_MANIFEST
    manifest.write_manifest_part(out, {"relpath": "a/x.png", "status": "done", "predicted": "a", "probability": 0.75,
                                       "probabilities": [0.75, 0.25], "run_id": "r1",
                                       "finished_at": manifest.now_utc()}, kind)
    manifest.write_manifest_part(out, {"relpath": "b.txt", "status": "failed", "error": "not an image file",
                                       "run_id": "r1", "finished_at": manifest.now_utc()}, kind)
    records, parts = manifest.read_manifest_state(out, kind)
    assert records["a/x.png"]["probabilities"] == [0.75, 0.25] and len(parts) == 2
    manifest.write_manifest(out, list(records.values()), parts, kind)
    table = pq.read_table(tmp_path / "out/_cvray/manifest.parquet")
    assert table.schema.names == kind.schema.names
    assert table.schema.metadata[manifest.KIND_KEY] == b"predict"
    header = (tmp_path / "out/_cvray/manifest.csv").read_text().splitlines()[0]
    assert "probabilities" not in header and '"predicted","probability"' in header


def test_a_manifest_of_another_job_is_refused(tmp_path):
    out = folders.open_folder(str(tmp_path / "out"))
    records = [{"relpath": "a.png", "status": "done", "output": "x", "run_id": "r", "finished_at": manifest.now_utc()}]
    manifest.write_manifest(out, records, [])  # the bulk job's (the default kind)
    assert manifest.read_manifest_state(out)[0]["a.png"]["output"] == "x"
    with pytest.raises(DataError, match=r"another cvray job \(stylize, not predict\)"):
        manifest.read_manifest_state(out, PREDICT_MANIFEST)


def test_a_manifest_without_the_kind_key_reads_as_any_kind(tmp_path):
    """Files written before kinds existed have no metadata key; missing columns read as nulls."""
    (tmp_path / "out/_cvray").mkdir(parents=True)
    pq.write_table(pa.table({"relpath": ["a.png"], "status": ["done"], "output": ["o"]}),
                   tmp_path / "out/_cvray/manifest.parquet")
    records, _ = manifest.read_manifest_state(folders.open_folder(str(tmp_path / "out")))
    assert records["a.png"]["output"] == "o" and records["a.png"]["loss_total"] is None


def test_plan_without_per_file_outputs(tmp_path):
    """A job with no file per input (predict): done rows are skipped without looking for outputs."""
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "sub").mkdir(parents=True)
    for rel in ("a.png", "sub/b.jpg", "x.gif", "x.png", "notes.txt"):
        (inp / rel).write_bytes(b"data")
    src, dst = folders.open_folder(str(inp)), folders.open_folder(str(out))
    manifest.write_manifest_part(dst, {"relpath": "a.png", "status": "done", "run_id": "old",
                                       "finished_at": manifest.now_utc()}, PREDICT_MANIFEST)
    manifest.write_manifest_part(dst, {"relpath": "sub/b.jpg", "status": "failed", "error": "x", "run_id": "old",
                                       "finished_at": manifest.now_utc()}, PREDICT_MANIFEST)
    plan = manifest.plan_work(src, dst, "new", kind=PREDICT_MANIFEST)
    assert plan.kind is PREDICT_MANIFEST and plan.skipped == 1
    assert plan.listed == ["a.png", "notes.txt", "sub/b.jpg", "x.gif", "x.png"]
    assert [i["relpath"] for i in plan.todo] == ["sub/b.jpg", "x.gif", "x.png"]  # no output names to clash
    assert all(i["output"] is None and i["out_path"] is None for i in plan.todo)
    assert [(r["relpath"], r["status"]) for r in plan.failed] == [("notes.txt", "failed")]
    assert len(manifest.plan_work(src, dst, "new", kind=PREDICT_MANIFEST, overwrite=True).todo) == 4
    summary = manifest.merge_manifest(plan, dst, "new", 1.0)
    assert (summary.done, summary.skipped, summary.failed) == (0, 1, 1)
    assert summary.errors[0].startswith("notes.txt: not an image file")


def test_failure_reason_is_one_line_without_the_file_name():
    assert manifest.failure_reason(DataError("a.png: empty file"), "a.png") == "empty file"
    assert manifest.failure_reason(RuntimeError("out of memory\nmore"), "a.png") == "RuntimeError: out of memory"
