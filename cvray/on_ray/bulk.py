"""Bulk stylisation of an image folder on Ray Data: the pipeline's wiring (the stages themselves
are plain Python in cvray.style.bulk, the optimiser is cvray.style.stylizer).

Pipeline: the driver lists the input and drops what earlier runs finished (cvray.manifest) -> CPU
tasks read the bytes, decode and shrink each image to its processing size -> an actor pool (one
Stylizer per actor: the VGG and the style Grams are built once) groups each batch by shape,
stylises B images of one shape at a time and writes every output atomically together with its
manifest part -> the driver merges the parts into OUTPUT/_cvray/manifest.parquet.

Every image is decided exactly once per run: it is either skipped (finished earlier), done or
failed; failures are rows of the manifest, never exceptions that stop the job.
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid

from cvray import folders, storage
from cvray.errors import DataError
from cvray.images import decode_image
from cvray.manifest import STYLIZE_MANIFEST, RunSummary, plan_work
from cvray.on_ray.connect import connect
from cvray.on_ray.folder_job import describe, run_plan, run_stages
from cvray.on_ray.placement import plan_actors
from cvray.style.bulk import StylizeActor, check_run_config, decode_batch, min_side
from cvray.style.config import StylizeFolderConfig

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ the job


def run_bulk(config: StylizeFolderConfig, *, address: str | None = None) -> RunSummary:
    """Stylise every image under config.input into config.output; see docs/bulk.md. Returns what
    this run did (its failures are in the summary and the manifest, never exceptions)."""
    from cvray.style.presets import validate_style_config

    validate_style_config(config.style, n_styles=len(config.style_images))
    src, dst = folders.open_folder(config.input), folders.open_folder(config.output)
    folders.check_not_nested(src, dst)
    style_bytes = [_read_style(path) for path in config.style_images]
    _check_weights(config.style.weights)
    run_id = uuid.uuid4().hex[:12]
    plan = plan_work(src, dst, run_id, overwrite=config.overwrite)
    has_outputs = any(r["status"] == "done" for r in plan.records.values())
    check_run_config(config, src, dst, [hashlib.sha1(b).hexdigest() for b in style_bytes], has_outputs)
    return run_plan(plan, dst, run_id, lambda: _execute(config, plan.todo, src, dst, style_bytes, run_id, address))


def _read_style(path: str) -> bytes:
    data = storage.read_bytes(path)
    decode_image(data, name=f"style image {path}")  # a bad style image is a usage error, now
    return data


def _check_weights(weights: str | None) -> None:
    """Fail fast on a missing weights file; a corrupt one fails in the actors (same message)."""
    if weights not in (None, "random") and not storage.exists(weights):
        raise DataError(f"--weights {weights}: file not found")


def _execute(config, todo, src, dst, style_bytes, run_id, address) -> None:
    placement = plan_actors(connect(address), config.num_actors, config.use_gpu, config.cpus_per_actor)
    log.info(f"stylising {len(todo)} images with {placement.count} actor(s) on {describe(placement)} each")
    run_stages(
        todo, src, dst, placement,
        decode=decode_batch, decode_kwargs={"src": src, "dst": dst, "style": config.style,
                                            "minimum": min_side(config.style), "run_id": run_id},
        actor=StylizeActor, actor_kwargs={"style": config.style, "style_bytes": style_bytes, "dst": dst,
                                          "run_id": run_id, "batch_size": config.batch_size},
        rows_per_call=max(1, min(4 * config.batch_size, math.ceil(len(todo) / (2 * placement.count)))),
        items_per_decode_task=4,
        kind=STYLIZE_MANIFEST, run_id=run_id,
    )
