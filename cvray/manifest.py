"""The per-file manifest of a folder job (bulk stylisation, batch prediction): one row per input
file, what was decided for it, and the resume plan built from it. Plain pyarrow; no Ray.

Each finished or failed file writes its own small Parquet part (keyed by its relative path, so a
retry replaces it) the moment it is decided: a crash loses nothing. The end of every run merges
the parts into OUTPUT/_cvray/manifest.parquet (and a CSV copy) and deletes them; the next run
reads the manifest and any parts a crash left, and skips what is done.

Every job shares the machinery and the BASE_COLUMNS (which file, done or failed and why, which
run decided it); a job describes its own row with a ManifestKind: its full column list (the base
columns plus its own), the TypedDict of a row, and whether each input has an output file of its
own. The bulk stylisation job's kind, STYLIZE_MANIFEST (ManifestRecord, MANIFEST_SCHEMA), is the
default of every function here; cvray.classification.predict defines PREDICT_MANIFEST.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
from dataclasses import dataclass, field
from typing import TypedDict

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cvray import folders
from cvray.errors import CvrayError, DataError, first_line
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
    node: str | None  # id of the Ray node whose worker decided it; None when decided while listing
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
    ("run_id", pa.string()), ("node", pa.string()), ("finished_at", pa.timestamp("ms", tz="UTC")),
])

BASE_COLUMNS = pa.schema([
    ("relpath", pa.string()), ("input", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("input_bytes", pa.int64()), ("run_id", pa.string()), ("node", pa.string()),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
])
"""Columns every job's manifest has (with these types): what the shared planning, resuming and
merging read and write."""
KIND_KEY = b"cvray.manifest"
"""Parquet schema-metadata key naming the job whose manifest a file is."""


@dataclass(frozen=True)
class ManifestKind:
    """One job's manifest: its name, its columns (BASE_COLUMNS plus the job's own, in file order),
    the TypedDict of a row (its keys are the columns, in order; a test checks each kind) and
    whether every input has an output file of its own (then an `output` string column holds it,
    and a finished file is skipped only while that output exists)."""

    name: str
    schema: pa.Schema
    record: type
    per_file_outputs: bool = False
    csv_columns: list[str] = field(init=False, compare=False)
    """Columns of the CSV copy: every column but list-valued ones (CSV has no lists)."""

    def __post_init__(self):
        for base in BASE_COLUMNS:
            if base.name not in self.schema.names or self.schema.field(base.name).type != base.type:
                raise ValueError(f"manifest {self.name!r}: needs the column {base.name} ({base.type})")
        if self.per_file_outputs and (
                "output" not in self.schema.names or self.schema.field("output").type != pa.string()):
            raise ValueError(f"manifest {self.name!r}: per-file outputs need an output string column")
        nested = [f.name for f in self.schema if pa.types.is_nested(f.type)]
        object.__setattr__(self, "csv_columns", [n for n in self.schema.names if n not in nested])

    @property
    def file_schema(self) -> pa.Schema:
        """The schema written to Parquet: the columns plus the job's name in the metadata."""
        return self.schema.with_metadata({KIND_KEY: self.name.encode("utf-8")})


STYLIZE_MANIFEST = ManifestKind("stylize", MANIFEST_SCHEMA, ManifestRecord, per_file_outputs=True)
"""The bulk stylisation job's manifest (docs/bulk.md), the default kind."""
CSV_COLUMNS = STYLIZE_MANIFEST.csv_columns


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def manifest_record(base: ManifestRecord, run_id: str, *, node: str | None = None, **fields) -> ManifestRecord:
    """A manifest row; `output` is set only where an output exists (status done). node: the Ray
    node deciding it (the folder job's stages are told theirs), so a bad node shows in the manifest."""
    output = base.get("output") if fields.get("status") == "done" else None
    return ManifestRecord(**{**base, **fields, "output": output, "run_id": run_id, "node": node,
                             "finished_at": now_utc()})


def failure_reason(exc: BaseException, name: str | None = None) -> str:
    """One line for a failed row: without the file's name (the row names it), with the type of an
    unexpected error (a CvrayError's text says enough)."""
    text = first_line(exc)
    if name and text.startswith(f"{name}: "):
        text = text[len(name) + 2:]  # the manifest row already names the file
    return text if isinstance(exc, CvrayError) else f"{type(exc).__name__}: {text}"


# ------------------------------------------------------------------ parts and the merged file


def part_path(folder: Folder, relpath: str) -> str:
    digest = hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:24]
    return metadata_path(folder, "parts", f"{digest}.parquet")


def records_to_table(records: list[ManifestRecord], kind: ManifestKind = STYLIZE_MANIFEST) -> pa.Table:
    columns = {name: [r.get(name) for r in records] for name in kind.schema.names}
    return pa.table(columns, schema=kind.file_schema)


def table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_manifest_part(folder: Folder, record: ManifestRecord, kind: ManifestKind = STYLIZE_MANIFEST) -> None:
    """DataError when the output cannot be written (a disk or object store gone): the job stops
    with that line, since no outcome could be recorded; what was recorded stays for the rerun."""
    data = table_bytes(records_to_table([record], kind))
    try:
        folders.write_file(folder, part_path(folder, record["relpath"]), data)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot write the manifest under {folder.uri}/{METADATA_DIR}: {first_line(exc)}; "
                        "rerun the same command to resume") from None


def read_manifest_state(
    folder: Folder, kind: ManifestKind = STYLIZE_MANIFEST
) -> tuple[dict[str, ManifestRecord], list[str]]:
    """({relpath: latest record}, paths of the parts read) from the manifest and leftover parts.

    DataError when a file cannot be read, or was written by another job (another kind)."""
    records: dict[str, ManifestRecord] = {}
    manifest = metadata_path(folder, MANIFEST_NAME)
    if folder.fs.get_file_info(manifest).type == pafs.FileType.File:
        for row in _read_table(folder, [manifest], kind).to_pylist():
            records[row["relpath"]] = row
    parts_dir = metadata_path(folder, "parts")
    parts = []
    if folder.fs.get_file_info(parts_dir).type == pafs.FileType.Directory:
        infos = folder.fs.get_file_info(pafs.FileSelector(parts_dir))
        parts = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if parts:
        for row in _read_table(folder, parts, kind).sort_by("finished_at").to_pylist():
            records[row["relpath"]] = row  # parts are newer than the manifest they were not merged into
    return records, parts


def _read_table(folder: Folder, paths: list[str], kind: ManifestKind) -> pa.Table:
    try:
        tables = [_read_file(folder, p, kind) for p in paths]
    except (OSError, pa.ArrowException) as exc:
        raise DataError(
            f"cannot read the manifest under {folder.uri}/{METADATA_DIR} ({first_line(exc)}); "
            "delete that folder or use --overwrite"
        ) from None
    return pa.concat_tables(tables) if tables else records_to_table([], kind)


def _read_file(folder: Folder, path: str, kind: ManifestKind) -> pa.Table:
    """One manifest file as `kind`'s columns: a column the file lacks (written by an older cvray)
    is null, one it has beyond them is dropped. A file of another job is a DataError."""
    with folder.fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        written_by = (parquet.schema_arrow.metadata or {}).get(KIND_KEY)
        if written_by is not None and written_by.decode("utf-8", "replace") != kind.name:
            raise DataError(
                f"{folder.uri} holds the output of another cvray job ({written_by.decode('utf-8', 'replace')}, "
                f"not {kind.name}): choose another output folder"
            )
        table = parquet.read()
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in kind.schema
    ]
    return pa.Table.from_arrays(columns, schema=kind.file_schema)


def write_manifest(
    folder: Folder, records: list[ManifestRecord], merged_parts: list[str], kind: ManifestKind = STYLIZE_MANIFEST
) -> str:
    """Write MANIFEST_NAME (and a CSV copy without list columns), then delete the merged parts."""
    table = records_to_table(sorted(records, key=lambda r: r["relpath"]), kind)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table.select(kind.csv_columns), sink)
    try:
        folders.write_file(folder, metadata_path(folder, MANIFEST_NAME), table_bytes(table))
        folders.write_file(folder, metadata_path(folder, "manifest.csv"), sink.getvalue().to_pybytes())
    except (OSError, pa.ArrowException) as exc:  # the parts stay: the next run merges them
        raise DataError(f"cannot write the manifest under {folder.uri}/{METADATA_DIR}: {first_line(exc)}; "
                        "rerun the same command to finish it") from None
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
    output: str | None  # as the user names it (path or URI); None for kinds without per-file outputs
    in_path: str  # paths inside the folders' filesystems
    out_path: str | None
    format: str | None  # Pillow format of the output


@dataclass
class Plan:
    todo: list[WorkItem]
    failed: list[ManifestRecord]
    """Records of files failed at listing time (not images, unsafe names, clashes)."""
    skipped: int
    records: dict[str, ManifestRecord]
    kind: ManifestKind = STYLIZE_MANIFEST
    listed: list[str] = field(default_factory=list)
    """Relative path of every file of the input, as listed by this run (sorted)."""


def plan_work(
    src: Folder, dst: Folder, run_id: str, *, overwrite: bool = False, kind: ManifestKind = STYLIZE_MANIFEST
) -> Plan:
    """List the input and decide per file: skip (finished earlier), process, or fail right away.

    A file is skipped when its latest row is done and, for kinds with per-file outputs, the row
    names the same output and that file exists. Files that are not images by extension, and
    unsafe names, fail here."""
    entries = folders.list_files(src)
    if not entries:
        raise DataError(f"no files under {src.uri}")
    records, _ = read_manifest_state(dst, kind)
    outputs = kind.per_file_outputs
    existing = {e.rel for e in folders.list_files(dst)} if outputs and not overwrite and records else set()
    todo, failed, skipped = [], [], 0
    for entry, out_rel, fmt, error in (_name_outputs(entries) if outputs else _check_inputs(entries)):
        base = ManifestRecord(relpath=entry.rel, input=src.uri_of(entry.rel), input_bytes=entry.size)
        if error is not None:
            failed.append(manifest_record(base, run_id, status="failed", error=error))
            continue
        earlier = records.get(entry.rel)
        output = dst.uri_of(out_rel) if outputs else None
        if (not overwrite and earlier and earlier["status"] == "done"
                and (not outputs or (earlier["output"] == output and out_rel in existing))):
            skipped += 1
            continue
        todo.append(WorkItem(relpath=entry.rel, input=base["input"], input_bytes=entry.size, output=output,
                             in_path=src.path_of(entry.rel), out_path=dst.path_of(out_rel) if outputs else None,
                             format=fmt))
    return Plan(todo, failed, skipped, records, kind, [e.rel for e in entries])


def _check_inputs(entries: list[folders.FileEntry]) -> list[tuple]:
    """(entry, None, None, error) per entry: the input checks of _name_outputs (a safe relative
    path with an image extension) for jobs that write no file per input."""
    result = []
    for entry in entries:
        try:
            folders.output_name(entry.rel)
            result.append((entry, None, None, None))
        except DataError as exc:
            result.append((entry, None, None, str(exc)))
    return result


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
    records, parts = read_manifest_state(dst, plan.kind)
    for record in plan.failed:
        records[record["relpath"]] = record
    manifest = write_manifest(dst, list(records.values()), parts, plan.kind)
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
