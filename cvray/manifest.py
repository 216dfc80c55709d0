"""The per-file manifest of a folder job (bulk stylisation): one row per input file, what was
decided for it, and the resume plan built from it. Plain pyarrow; no Ray.

Each finished or failed file writes its own small Parquet part (keyed by its relative path, so a
retry replaces it) the moment it is decided: a crash loses nothing. The end of every run merges
the parts into OUTPUT/_cvray/manifest.parquet (and a CSV copy) and deletes them; the next run
reads the manifest and any parts a crash left, and skips what is done.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
from dataclasses import dataclass
from typing import TypedDict

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cvray import folders
from cvray.errors import DataError, first_line
from cvray.folders import METADATA_DIR, Folder, metadata_path


class ManifestRecord(TypedDict, total=False):
    """One manifest row. Keys are MANIFEST_SCHEMA's names (a test checks they agree)."""

    relpath: str  # input path relative to the input folder, "/"-separated
    input: str  # input as the user names it (path or URI)
    output: str | None  # output path or URI; None unless status is "done"
    status: str  # "done" or "failed"
    error: str | None  # one-line reason when failed
    width: int  # output (processing) size in pixels
    height: int
    input_width: int  # upright input size (EXIF orientation applied)
    input_height: int
    input_bytes: int
    loss_content: float  # losses at the last iteration (weighted, as optimised)
    loss_style: float
    loss_tv: float
    loss_total: float
    loss_curve: list[float]  # total loss per iteration
    seconds: float  # processing time of the file's batch / files in it
    batch_images: int  # files processed together with it (same shape)
    run_id: str  # the run that decided this row
    finished_at: datetime.datetime  # UTC


MANIFEST_NAME = "manifest.parquet"
MANIFEST_SCHEMA = pa.schema([
    ("relpath", pa.string()), ("input", pa.string()), ("output", pa.string()),
    ("status", pa.string()), ("error", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("input_width", pa.int32()), ("input_height", pa.int32()),
    ("input_bytes", pa.int64()),
    ("loss_content", pa.float64()), ("loss_style", pa.float64()), ("loss_tv", pa.float64()),
    ("loss_total", pa.float64()), ("loss_curve", pa.list_(pa.float32())),
    ("seconds", pa.float64()), ("batch_images", pa.int32()),
    ("run_id", pa.string()), ("finished_at", pa.timestamp("ms", tz="UTC")),
])
CSV_COLUMNS = [name for name in MANIFEST_SCHEMA.names if name != "loss_curve"]


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def manifest_record(base: ManifestRecord, run_id: str, **fields) -> ManifestRecord:
    """A manifest row; `output` is set only where an output exists (status done)."""
    output = base.get("output") if fields.get("status") == "done" else None
    return ManifestRecord(**{**base, **fields, "output": output, "run_id": run_id, "finished_at": now_utc()})


# ------------------------------------------------------------------ parts and the merged file


def part_path(folder: Folder, relpath: str) -> str:
    digest = hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:24]
    return metadata_path(folder, "parts", f"{digest}.parquet")


def records_to_table(records: list[ManifestRecord]) -> pa.Table:
    columns = {name: [r.get(name) for r in records] for name in MANIFEST_SCHEMA.names}
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_manifest_part(folder: Folder, record: ManifestRecord) -> None:
    folders.write_file(folder, part_path(folder, record["relpath"]), table_bytes(records_to_table([record])))


def read_manifest_state(folder: Folder) -> tuple[dict[str, ManifestRecord], list[str]]:
    """({relpath: latest record}, paths of the parts read) from the manifest and leftover parts."""
    records: dict[str, ManifestRecord] = {}
    manifest = metadata_path(folder, MANIFEST_NAME)
    if folder.fs.get_file_info(manifest).type == pafs.FileType.File:
        for row in _read_table(folder, [manifest]).to_pylist():
            records[row["relpath"]] = row
    parts_dir = metadata_path(folder, "parts")
    parts = []
    if folder.fs.get_file_info(parts_dir).type == pafs.FileType.Directory:
        infos = folder.fs.get_file_info(pafs.FileSelector(parts_dir))
        parts = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if parts:
        for row in _read_table(folder, parts).sort_by("finished_at").to_pylist():
            records[row["relpath"]] = row  # parts are newer than the manifest they were not merged into
    return records, parts


def _read_table(folder: Folder, paths: list[str]) -> pa.Table:
    try:
        tables = [pq.read_table(p, filesystem=folder.fs, schema=MANIFEST_SCHEMA) for p in paths]
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(
            f"cannot read the manifest under {folder.uri}/{METADATA_DIR} ({first_line(exc)}); "
            "delete that folder or use --overwrite"
        ) from None
    return pa.concat_tables(tables) if tables else records_to_table([])


def write_manifest(folder: Folder, records: list[ManifestRecord], merged_parts: list[str]) -> str:
    """Write MANIFEST_NAME (and a CSV copy without the curves), then delete the merged parts."""
    table = records_to_table(sorted(records, key=lambda r: r["relpath"]))
    folders.write_file(folder, metadata_path(folder, MANIFEST_NAME), table_bytes(table))
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table.select(CSV_COLUMNS), sink)
    folders.write_file(folder, metadata_path(folder, "manifest.csv"), sink.getvalue().to_pybytes())
    for path in merged_parts:
        try:
            folder.fs.delete_file(path)
        except OSError:
            pass  # already gone; the manifest holds its row
    return folder.uri_of(f"{METADATA_DIR}/{MANIFEST_NAME}")


# ------------------------------------------------------------------ the resume plan and the summary


class WorkItem(TypedDict):
    """One input file to process in this run (a Ray Data row of the folder job)."""

    relpath: str
    input: str
    input_bytes: int
    output: str  # as the user names it (path or URI)
    in_path: str  # paths inside the folders' filesystems
    out_path: str
    format: str  # Pillow format of the output


@dataclass
class Plan:
    todo: list[WorkItem]
    failed: list[ManifestRecord]
    """Records of files failed at listing time (not images, unsafe names, clashes)."""
    skipped: int
    records: dict[str, ManifestRecord]


def plan_work(src: Folder, dst: Folder, run_id: str, *, overwrite: bool = False) -> Plan:
    """List the input and decide per file: skip (finished earlier), process, or fail right away."""
    entries = folders.list_files(src)
    if not entries:
        raise DataError(f"no files under {src.uri}")
    records, _ = read_manifest_state(dst)
    existing = {e.rel for e in folders.list_files(dst)} if not overwrite and records else set()
    todo, failed, skipped = [], [], 0
    for entry, out_rel, fmt, error in _name_outputs(entries):
        base = ManifestRecord(relpath=entry.rel, input=src.uri_of(entry.rel), input_bytes=entry.size)
        if error is not None:
            failed.append(manifest_record(base, run_id, status="failed", error=error))
            continue
        earlier = records.get(entry.rel)
        output = dst.uri_of(out_rel)
        if (not overwrite and earlier and earlier["status"] == "done"
                and earlier["output"] == output and out_rel in existing):
            skipped += 1
            continue
        todo.append(WorkItem(relpath=entry.rel, input=base["input"], input_bytes=entry.size, output=output,
                             in_path=src.path_of(entry.rel), out_path=dst.path_of(out_rel), format=fmt))
    return Plan(todo, failed, skipped, records)


def _name_outputs(entries: list[folders.FileEntry]) -> list[tuple]:
    """(entry, output rel, format, error) per entry, in order. When two inputs map to one output
    (x.gif and x.png both want x.png), the one keeping its own name wins; the other fails."""
    named = []
    for entry in entries:
        try:
            named.append((entry, *folders.output_name(entry.rel), None))
        except DataError as exc:
            named.append((entry, None, None, str(exc)))
    owners = {out: e.rel for e, out, _, err in named if err is None and out == e.rel}
    result = []
    for entry, out_rel, fmt, error in named:
        if error is None and owners.setdefault(out_rel, entry.rel) != entry.rel:
            error = f"its output name {out_rel} is taken by {owners[out_rel]}"
        result.append((entry, out_rel, fmt, error))
    return result


@dataclass
class RunSummary:
    """What one run of a folder job did."""

    done: int
    skipped: int
    failed: int
    seconds: float
    images_per_sec: float
    manifest: str
    run_id: str
    errors: list[str]
    """A few distinct failure reasons (with counts), each naming a file, for the console."""

    def line(self) -> str:
        return (
            f"done {self.done}, skipped {self.skipped}, failed {self.failed}, "
            f"{self.images_per_sec:.2f} images/sec (manifest: {self.manifest})"
        )


def merge_manifest(plan: Plan, dst: Folder, run_id: str, seconds: float) -> RunSummary:
    """Fold this run's parts (and listing failures) into the manifest; count this run's rows."""
    records, parts = read_manifest_state(dst)
    for record in plan.failed:
        records[record["relpath"]] = record
    manifest = write_manifest(dst, list(records.values()), parts)
    mine = [r for r in records.values() if r["run_id"] == run_id]
    done = sum(r["status"] == "done" for r in mine)
    failed = sorted((r for r in mine if r["status"] == "failed"), key=lambda r: r["relpath"])
    errors = collections.Counter(r["error"] for r in failed)
    example = {}  # reason -> first file that failed with it, so the console names a file
    for r in failed:
        example.setdefault(r["error"], r["relpath"])
    return RunSummary(
        done=done, skipped=plan.skipped, failed=len(failed), seconds=seconds,
        images_per_sec=done / seconds if seconds > 0 else 0.0, manifest=manifest, run_id=run_id,
        errors=[f"{example[e]}: {e}" + (f" (and {n - 1} more)" if n > 1 else "") for e, n in errors.most_common(3)],
    )
