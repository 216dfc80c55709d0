"""Bulk stylisation without Ray: the size each image is processed at, the smallest size the
network accepts, the check that one output folder never mixes settings, and the two stages that
cvray.on_ray.bulk runs on Ray Data (decode tasks, stylising actors) as plain Python, so they also
run (and are benchmarked) where Ray is absent.

Which files to process, skip or fail is cvray.manifest's plan.
"""

from __future__ import annotations

import collections
import json
import math
import re
import zlib
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from cvray import folders
from cvray.errors import ConfigError, CvrayError, DataError
from cvray.folders import Folder
from cvray.images import decode_image, decode_image_at, encode_image, to_pil
from cvray.manifest import ManifestRecord, WorkItem, manifest_record, write_manifest_part
from cvray.manifest import failure_reason as reason  # shared by the folder jobs; the name bulk uses
from cvray.style.config import StyleConfig, StylizeFolderConfig

_DECODED_SCHEMA = pa.schema([
    ("relpath", pa.string()), ("input", pa.string()), ("output", pa.string()),
    ("out_path", pa.string()), ("format", pa.string()), ("input_bytes", pa.int64()),
    ("input_width", pa.int32()), ("input_height", pa.int32()),
    ("height", pa.int32()), ("width", pa.int32()),
    ("pixels", pa.binary()),  # uint8 RGB, row-major (height, width, 3)
])
_RESULT_SCHEMA = pa.schema([("relpath", pa.string()), ("status", pa.string()), ("error", pa.string())])


# ------------------------------------------------------------------ sizes


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
    """size_for(width, height) -> the (H, W) an upright image is stylised (and written) at:
    StyleConfig.output_size, the rule the Stylizer uses too, so decode tasks size images before
    any VGG or tensor exists. DataError when that is smaller than `minimum` on a side."""

    def size_for(width: int, height: int) -> tuple[int, int]:
        h, w = config.output_size(width, height)
        if min(h, w) < minimum:
            raise DataError(
                f"too small for the network: {width}x{height} px is processed at {w}x{h}; both sides "
                f"must be at least {minimum} px (the deepest VGG layer comes after "
                f"{int(math.log2(minimum))} poolings)"
            )
        return h, w
    return size_for


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


# ------------------------------------------------------------------ the two stages Ray Data runs


def decode_batch(
    batch: pa.Table, *, src: Folder, dst: Folder, style: StyleConfig, minimum: int, run_id: str,
    node: str | None = None,
) -> pa.Table:
    """Ray Data task: read, decode and size every image of the batch; failures become manifest
    parts here (recording `node`, this task's Ray node) and leave the stream, successes go on as
    raw RGB pixels. No torch is imported here, so these workers start fast."""
    size_for = size_checker(style, minimum)
    rows = []
    for item in batch.to_pylist():
        try:
            with src.fs.open_input_stream(item["in_path"]) as f:
                data = f.read()
            img, (w0, h0) = decode_image_at(data, size_for, name=item["relpath"])
            pixels = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001 - any bad file is a failed row, never a stopped job
            why = reason(exc, item["relpath"])
            write_manifest_part(dst, manifest_record(_base(item), run_id, node=node, status="failed", error=why))
            continue
        rows.append({
            **{k: item[k] for k in ("relpath", "input", "output", "out_path", "format", "input_bytes")},
            "input_width": w0, "input_height": h0, "height": pixels.shape[0],
            "width": pixels.shape[1], "pixels": pixels.tobytes(),
        })
    return pa.Table.from_pylist(rows, schema=_DECODED_SCHEMA)


class StylizeActor:
    """Ray Data callable class: one Stylizer (VGG + cached style Grams) for the actor's life."""

    def __init__(self, *, style: StyleConfig, style_bytes: list[bytes], dst: Folder, run_id: str,
                 batch_size: int, threads: int | None, use_gpu: bool, node: str | None = None):
        import torch

        from cvray.style.stylizer import Stylizer

        if threads:
            torch.set_num_threads(threads)  # Ray's OMP_NUM_THREADS follows the fractional CPU share
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        torch.manual_seed(style.seed)  # with --weights random every actor builds the same VGG
        self.style, self.dst, self.run_id, self.batch_size = style, dst, run_id, batch_size
        self.node = node  # the Ray node this actor runs on, for its manifest rows
        self.stylizer, self.setup_error = None, None
        try:
            images = [decode_image(b, name=f"style image {i}") for i, b in enumerate(style_bytes)]
            self.stylizer = Stylizer(style, images, device=device)
        except CvrayError as exc:
            # Raised from the first batch instead: an error in an actor's constructor makes Ray
            # restart it again and again, then end with an ActorDiedError hiding the reason.
            self.setup_error = exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.setup_error is not None:
            raise self.setup_error
        by_shape = collections.defaultdict(list)
        for row in batch.to_pylist():
            by_shape[(row["height"], row["width"])].append(row)
        results = []
        for rows in by_shape.values():
            for start in range(0, len(rows), self.batch_size):
                results += self._stylize(rows[start:start + self.batch_size])
        return pa.Table.from_pylist(results, schema=_RESULT_SCHEMA)

    def _stylize(self, rows: list[dict]) -> list[dict]:
        """Stylise rows of one shape together; write each output and its manifest part."""
        import torch

        arrays = [np.frombuffer(r["pixels"], np.uint8).reshape(r["height"], r["width"], 3) for r in rows]
        contents = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        seeds = [self.style.seed + zlib.crc32(r["relpath"].encode()) % 2**30 for r in rows]  # per image
        try:
            result = self.stylizer.stylize(contents, seed=seeds)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: fail these rows, keep going
            return [self._finish(r, error=f"stylising failed: {reason(exc)}") for r in rows]
        out = []
        for i, row in enumerate(rows):
            losses = {k: v[i] for k, v in result.losses.items()}
            fields = {
                "loss_content": _last(losses.get("content")), "loss_style": _last(losses.get("style")),
                "loss_tv": _last(losses.get("tv")), "loss_total": _last(losses.get("total")),
                "loss_curve": [float(v) for v in losses.get("total", [])],
                "seconds": result.seconds / len(rows), "batch_images": len(rows),
            }
            out.append(self._finish(row, image=result.images[i], **fields))
        return out

    def _finish(self, row: dict, *, image=None, error: str | None = None, **fields) -> dict:
        base = {**_base(row), "width": row["width"], "height": row["height"],
                "input_width": row["input_width"], "input_height": row["input_height"]}
        if image is not None:
            try:
                data = encode_image(to_pil(image), row["format"])
                # The image first: a part never claims a file that isn't there (a crash between
                # the two leaves an unrecorded image, which the rerun redoes).
                folders.write_file(self.dst, row["out_path"], data)
                write_manifest_part(self.dst, manifest_record(base, self.run_id, node=self.node, status="done",
                                                              **fields))
                return {"relpath": row["relpath"], "status": "done", "error": None}
            except Exception as exc:  # noqa: BLE001 - a full disk or a bad path fails one image
                error = f"writing failed: {reason(exc)}"
        write_manifest_part(self.dst, manifest_record(base, self.run_id, node=self.node, status="failed",
                                                      error=error))
        return {"relpath": row["relpath"], "status": "failed", "error": error}


def _base(item: WorkItem | dict) -> ManifestRecord:
    return ManifestRecord(**{k: item.get(k) for k in ("relpath", "input", "output", "input_bytes")})


def _last(curve) -> float | None:
    return float(curve[-1]) if curve is not None and len(curve) else None
