"""Bulk stylisation of an image folder on Ray Data (Ray glue; the optimiser is cvray.style.stylizer).

Pipeline: the driver lists the input and drops what earlier runs finished -> CPU tasks read the
bytes, decode and shrink each image to its processing size -> an actor pool (one Stylizer per
actor: the VGG and the style Grams are built once) groups each batch by shape, stylises B images
of one shape at a time and writes every output atomically together with its manifest part ->
the driver merges the parts into OUTPUT/_cvray/manifest.parquet and prints a summary line.

Every image is decided exactly once per run: it is either skipped (finished earlier), done or
failed; failures are rows of the manifest, never exceptions that stop the job.
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import re
import time
import uuid
import zlib

import numpy as np
import pyarrow as pa

from cvray.style.bulk_plan import (
    BulkSummary, check_run_config, manifest_record, merge_manifest, min_side, plan_work,
    processing_size, size_checker,
)
from cvray.config import StyleConfig, StylizeFolderConfig
from cvray import folders
from cvray.folders import Folder
from cvray.images import decode_image, decode_image_at, encode_image, to_pil
from cvray.errors import ConfigError, CvrayError, DataError

__all__ = ["BulkSummary", "StylizeActor", "decode_batch", "min_side", "plan_work", "processing_size",
           "run_bulk"]

DECODE_CPUS = 0.25
"""CPUs a read-and-decode task asks for: small, so reads always fit beside the actors."""
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
           "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_PROFILE")
_DECODED_SCHEMA = pa.schema([
    ("relpath", pa.string()), ("input", pa.string()), ("output", pa.string()),
    ("out_path", pa.string()), ("format", pa.string()), ("input_bytes", pa.int64()),
    ("input_width", pa.int32()), ("input_height", pa.int32()),
    ("height", pa.int32()), ("width", pa.int32()),
    ("pixels", pa.binary()),  # uint8 RGB, row-major (height, width, 3)
])
_RESULT_SCHEMA = pa.schema([("relpath", pa.string()), ("status", pa.string()), ("error", pa.string())])


# ------------------------------------------------------------------ Ray Data stages


def decode_batch(
    batch: pa.Table, *, src: Folder, dst: Folder, style: StyleConfig, minimum: int, run_id: str
) -> pa.Table:
    """Ray Data task: read, decode and size every image of the batch; failures become manifest
    parts here (and leave the stream), successes go on as raw RGB pixels. No torch is imported
    here, so these workers start fast."""
    size_for = size_checker(style, minimum)
    rows = []
    for item in batch.to_pylist():
        try:
            with src.fs.open_input_stream(item["in_path"]) as f:
                data = f.read()
            img, (w0, h0) = decode_image_at(data, size_for, name=item["relpath"])
            pixels = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001 - any bad file is a failed row, never a stopped job
            reason = _reason(exc, item["relpath"])
            folders.write_manifest_part(dst, manifest_record(_base(item), run_id, status="failed", error=reason))
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
                 batch_size: int, threads: int | None, use_gpu: bool):
        import torch

        from cvray.style.stylizer import Stylizer

        if threads:
            torch.set_num_threads(threads)  # Ray's OMP_NUM_THREADS follows the fractional CPU share
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        torch.manual_seed(style.seed)  # with --weights random every actor builds the same VGG
        self.style, self.dst, self.run_id, self.batch_size = style, dst, run_id, batch_size
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
            return [self._finish(r, error=f"stylising failed: {_reason(exc)}") for r in rows]
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
                # The part first: a crash between the two only redoes this image on the rerun.
                folders.write_manifest_part(self.dst, manifest_record(base, self.run_id, status="done", **fields))
                folders.write_file(self.dst, row["out_path"], data)
                return {"relpath": row["relpath"], "status": "done", "error": None}
            except Exception as exc:  # noqa: BLE001 - a full disk or a bad path fails one image
                error = f"writing failed: {_reason(exc)}"
        folders.write_manifest_part(self.dst, manifest_record(base, self.run_id, status="failed", error=error))
        return {"relpath": row["relpath"], "status": "failed", "error": error}


def _base(item: dict) -> dict:
    return {k: item.get(k) for k in ("relpath", "input", "output", "input_bytes")}


def _last(curve) -> float | None:
    return float(curve[-1]) if curve is not None and len(curve) else None


def _reason(exc: BaseException, name: str | None = None) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    if name and text.startswith(f"{name}: "):
        text = text[len(name) + 2:]  # the manifest row already names the file
    return text if isinstance(exc, CvrayError) else f"{type(exc).__name__}: {text}"


# ------------------------------------------------------------------ the job


def run_bulk(config: StylizeFolderConfig, *, address: str | None = None, echo=print) -> BulkSummary:
    """Stylise every image under config.input into config.output; see docs/bulk.md."""
    from cvray.style.stylizer import validate_style_config

    validate_style_config(config.style, n_styles=len(config.style_images))
    src, dst = folders.open_folder(config.input), folders.open_folder(config.output)
    folders.check_not_nested(src, dst)
    style_bytes = [_read_style(path) for path in config.style_images]
    _check_weights(config.style.weights)
    run_id = uuid.uuid4().hex[:12]
    plan = plan_work(config, src, dst, run_id)
    has_outputs = any(r["status"] == "done" for r in plan.records.values())
    check_run_config(config, src, dst, [hashlib.sha1(b).hexdigest() for b in style_bytes], has_outputs)
    start = time.perf_counter()
    try:
        if plan.todo:
            _execute(config, plan.todo, src, dst, style_bytes, run_id, address, echo)
    except BaseException:  # Ctrl-C or a crash: keep what finished in the manifest, then stop
        try:
            merge_manifest(plan, dst, run_id, time.perf_counter() - start)
        except Exception:  # noqa: BLE001 - the parts stay; the next run merges them
            pass
        raise
    summary = merge_manifest(plan, dst, run_id, time.perf_counter() - start)
    echo(summary.line())
    for error in summary.errors:
        echo(f"  failed: {error}")
    return summary


def _read_style(path: str) -> bytes:
    from cvray import storage

    data = storage.read_bytes(path)
    decode_image(data, name=f"style image {path}")  # a bad style image is a usage error, now
    return data


def _check_weights(weights: str | None) -> None:
    """Fail fast on a missing weights file; a corrupt one fails in the actors (same message)."""
    from cvray import storage

    if weights not in (None, "random") and not storage.exists(weights):
        raise DataError(f"--weights {weights}: file not found")


def _execute(config, todo, src, dst, style_bytes, run_id, address, echo) -> None:
    import ray

    from cvray.on_ray.connect import connect

    info = connect(address)
    use_gpu = bool(info.gpus) if config.use_gpu is None else config.use_gpu
    if use_gpu and not info.gpus:
        raise ConfigError("--gpu asked for, but the Ray cluster has no GPUs")
    num_actors = config.num_actors or (int(info.gpus) if use_gpu else max(1, int(info.cpus) // 2))
    if use_gpu and num_actors > info.gpus:
        raise ConfigError(f"--num-actors {num_actors} needs {num_actors} GPUs; the cluster has {info.gpus:g}")
    actor_cpus, threads = actor_resources(info.cpus, num_actors, use_gpu, config.cpus_per_actor)
    env = _remote_env(src, dst)
    rows_per_call = max(1, min(4 * config.batch_size, math.ceil(len(todo) / (2 * num_actors))))
    echo(f"stylising {len(todo)} images with {num_actors} actor(s) on "
         f"{'GPU' if use_gpu else f'{actor_cpus:.2g} CPUs, {threads} torch thread(s)'} each")
    ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), max(2 * num_actors, len(todo) // 4)))
    ds = ds.map_batches(
        decode_batch, batch_format="pyarrow", batch_size=None, num_cpus=DECODE_CPUS,
        fn_kwargs={"src": src, "dst": dst, "style": config.style, "minimum": min_side(config.style),
                   "run_id": run_id},
        **env,
    )
    ds = ds.map_batches(
        StylizeActor, batch_format="pyarrow", batch_size=rows_per_call,
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        fn_constructor_kwargs={"style": config.style, "style_bytes": style_bytes, "dst": dst,
                               "run_id": run_id, "batch_size": config.batch_size,
                               "threads": threads, "use_gpu": use_gpu},
        num_cpus=actor_cpus, num_gpus=1 if use_gpu else 0, **env,
    )
    try:
        for _ in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            pass  # every row's outcome is already in its manifest part
    except Exception as exc:  # noqa: BLE001 - surface a user error raised inside an actor as one line
        user = _user_error(exc)
        if user is None:
            raise
        raise type(user)(_reason(user)) from None


def actor_resources(cluster_cpus: float, num_actors: int, use_gpu: bool,
                    cpus_per_actor: float | None = None) -> tuple[float, int | None]:
    """(CPUs each actor reserves from Ray, torch threads per actor; None on GPU actors).

    The reservation always leaves max(0.5, 10%) of the cluster's CPUs to the read/decode tasks:
    actors holding every CPU starve them, and Ray Data then hangs silently.
    """
    free = max(0.1, (cluster_cpus - max(0.5, 0.1 * cluster_cpus)) / num_actors)
    if use_gpu:
        return min(1.0, free), None
    want = cpus_per_actor if cpus_per_actor is not None else cluster_cpus / num_actors
    return min(want, free), max(1, int(want))


def _remote_env(src: Folder, dst: Folder) -> dict:
    """Object-store credentials set where the job starts also reach the Ray workers."""
    if src.is_local and dst.is_local:
        return {}
    env = {k: os.environ[k] for k in AWS_ENV if os.environ.get(k)}
    return {"runtime_env": {"env_vars": env}} if env else {}


def _user_error(exc: BaseException) -> CvrayError | None:
    """The CvrayError raised inside a task or actor (bad weights, say), if that stopped the run.

    Ray Data re-raises a UDF's error as RayTaskError(UserCodeException), and an actor that dies
    in its constructor as ActorDiedError; both carry the original only as remote traceback text.
    """
    from cvray import errors

    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CvrayError) and not hasattr(e, "cause"):
            return e
        text = f"{getattr(e, 'error_msg', '')}\n{e}"
        found = re.findall(r"^cvray\.errors\.(\w+Error): (.+)$", text, re.M)
        if found and isinstance(getattr(errors, found[-1][0], None), type):
            return getattr(errors, found[-1][0])(found[-1][1])
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


