"""What the bulk job does, decided without Ray: processing sizes, which files to stylise, skip
or fail (resume), the settings check, and the merged manifest with the run's summary.

Plain Python + pyarrow (cvray.folders does the file work); cvray.on_ray.bulk runs the plan on Ray.
"""

from __future__ import annotations

import collections
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.fs as pafs

from cvray.config import StyleConfig, StylizeFolderConfig
from cvray import folders
from cvray.folders import Folder
from cvray.errors import ConfigError, DataError


# ------------------------------------------------------------------ sizes


def processing_size(config: StyleConfig, width: int, height: int) -> tuple[int, int]:
    """(H, W) an upright width x height image is stylised (and written) at.

    StyleConfig.output_size, the rule Stylizer.output_size uses too: decode tasks size images
    with it before any VGG or tensor exists.
    """
    return config.output_size(width, height)


def min_side(config: StyleConfig) -> int:
    """Smallest processing height/width the network accepts: the deepest tap must see >= 1 px.

    Each max-pool halves (floor) the size, so a tap in block b (after b-1 pools) needs
    2**(b-1) px and pool b needs 2**b. The lab's conv5_1 sits after 4 pools: 16 px.
    """
    from cvray.style.vgg import default_content_layers  # torch/torchvision: only where sizes are checked

    content = config.content_layers or default_content_layers(config.arch)
    need = 2
    for name in (*config.style_layers, *content):
        match = re.fullmatch(r"(conv|relu)(\d)_\d+|pool(\d)", name)
        if match:
            need = max(need, 2 ** (int(match.group(2)) - 1) if match.group(2) else 2 ** int(match.group(3)))
    return need


def size_checker(config: StyleConfig, minimum: int) -> Callable[[int, int], tuple[int, int]]:
    def size_for(width: int, height: int) -> tuple[int, int]:
        h, w = processing_size(config, width, height)
        if min(h, w) < minimum:
            raise DataError(
                f"too small for the network: {width}x{height} px is processed at {w}x{h}; both sides "
                f"must be at least {minimum} px (the deepest VGG layer comes after "
                f"{int(math.log2(minimum))} poolings)"
            )
        return h, w
    return size_for


# ------------------------------------------------------------------ planning and resume


@dataclass
class BulkSummary:
    done: int
    skipped: int
    failed: int
    seconds: float
    images_per_sec: float
    manifest: str
    run_id: str
    errors: list[str]
    """A few distinct failure reasons (with counts), for the console."""

    def line(self) -> str:
        return (
            f"done {self.done}, skipped {self.skipped}, failed {self.failed}, "
            f"{self.images_per_sec:.2f} images/sec (manifest: {self.manifest})"
        )


@dataclass
class _Plan:
    todo: list[dict]
    """One item per image to stylise (paths, display names, output format)."""
    failed: list[dict]
    """Manifest records of files failed at listing time (not images, unsafe names, clashes)."""
    skipped: int
    records: dict[str, dict]
    merged_parts: list[str]


def plan_work(config: StylizeFolderConfig, src: Folder, dst: Folder, run_id: str) -> _Plan:
    """List the input and decide per file: skip (finished earlier), stylise, or fail right away."""
    entries = folders.list_files(src)
    if not entries:
        raise DataError(f"no files under {src.uri}")
    records, parts = folders.read_manifest_state(dst)
    existing = {e.rel for e in folders.list_files(dst)} if not config.overwrite and records else set()
    todo, failed, skipped = [], [], 0
    for entry, out_rel, fmt, error in _name_outputs(entries):
        base = {"relpath": entry.rel, "input": src.uri_of(entry.rel), "input_bytes": entry.size}
        if error is not None:
            failed.append(manifest_record(base, run_id, status="failed", error=error))
            continue
        earlier = records.get(entry.rel)
        output = dst.uri_of(out_rel)
        if (not config.overwrite and earlier and earlier["status"] == "done"
                and earlier["output"] == output and out_rel in existing):
            skipped += 1
            continue
        todo.append({**base, "output": output, "in_path": src.path_of(entry.rel),
                     "out_path": dst.path_of(out_rel), "format": fmt})
    return _Plan(todo, failed, skipped, records, parts)


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


def manifest_record(base: dict, run_id: str, **fields) -> dict:
    """A manifest row; `output` is set only where an output exists (status done)."""
    output = base.get("output") if fields.get("status") == "done" else None
    return {**base, **fields, "output": output, "run_id": run_id, "finished_at": folders.now_utc()}


def check_run_config(
    config: StylizeFolderConfig, src: Folder, dst: Folder, style_digests: list[str], has_outputs: bool
) -> None:
    """Refuse to mix outputs made with other settings into one folder (unless --overwrite or
    nothing was finished yet); then record this run's settings in OUTPUT/_cvray/config.json.

    The input is compared as the place it resolves to ("photos" and "./photos/" are one input),
    the style images by content."""
    path = folders.metadata_path(dst, "config.json")
    where = f"{src.fs.type_name}:{src.path}"
    current = {"input": where, "style_images": style_digests, "style": config.style.to_dict()}
    if has_outputs and not config.overwrite and dst.fs.get_file_info(path).type == pafs.FileType.File:
        with dst.fs.open_input_stream(path) as f:
            earlier = json.loads(f.read().decode("utf-8"))
        changed = _changed(earlier, current)
        if changed:
            raise ConfigError(
                f"{dst.uri} holds images made with other settings ({', '.join(changed[:4])}): "
                "rerun with --overwrite to redo them all, or choose another --output"
            )
    text = json.dumps({**current, "folder_config": config.to_dict()}, indent=2, default=str)
    folders.write_file(dst, path, text.encode("utf-8"))


def _changed(earlier: dict, current: dict) -> list[str]:
    out = []
    if earlier.get("input") != current["input"]:
        out.append(f"input {earlier.get('input')} -> {current['input']}")
    if earlier.get("style_images") != current["style_images"]:
        out.append("style images")
    before, now = earlier.get("style", {}), current["style"]
    for key in sorted(set(before) & set(now)):  # a field added by a newer cvray is not a change
        if json.dumps(before.get(key)) != json.dumps(now.get(key)):
            out.append(f"{key} {before.get(key)} -> {now.get(key)}")
    return out


def merge_manifest(plan: _Plan, dst: Folder, run_id: str, seconds: float) -> BulkSummary:
    """Fold this run's parts (and listing failures) into the manifest; count this run's rows."""
    records, parts = folders.read_manifest_state(dst)
    for record in plan.failed:
        records[record["relpath"]] = record
    manifest = folders.write_manifest(dst, list(records.values()), parts)
    mine = [r for r in records.values() if r["run_id"] == run_id]
    done = sum(r["status"] == "done" for r in mine)
    failed = sorted((r for r in mine if r["status"] == "failed"), key=lambda r: r["relpath"])
    errors = collections.Counter(r["error"] for r in failed)
    example = {}  # reason -> first file that failed with it, so the console names a file
    for r in failed:
        example.setdefault(r["error"], r["relpath"])
    return BulkSummary(
        done=done, skipped=plan.skipped, failed=len(failed), seconds=seconds,
        images_per_sec=done / seconds if seconds > 0 else 0.0, manifest=manifest, run_id=run_id,
        errors=[f"{example[e]}: {e}" + (f" (and {n - 1} more)" if n > 1 else "") for e, n in errors.most_common(3)],
    )
