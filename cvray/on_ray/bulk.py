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
import os
import re
import time
import uuid

import ray

from cvray import folders, storage
from cvray.errors import CvrayError, DataError
from cvray.folders import Folder
from cvray.images import decode_image
from cvray.manifest import RunSummary, merge_manifest, plan_work
from cvray.on_ray.connect import connect
from cvray.on_ray.placement import plan_actors
from cvray.style.bulk import StylizeActor, check_run_config, decode_batch, min_side, reason
from cvray.style.config import StylizeFolderConfig

log = logging.getLogger(__name__)

DECODE_CPUS = 0.25
"""CPUs a read-and-decode task asks for: small, so reads always fit beside the actors."""
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
           "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_PROFILE")


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
    start = time.perf_counter()
    try:
        if plan.todo:
            _execute(config, plan.todo, src, dst, style_bytes, run_id, address)
    except BaseException:  # Ctrl-C or a crash: keep what finished in the manifest, then stop
        try:
            merge_manifest(plan, dst, run_id, time.perf_counter() - start)
        except Exception:  # noqa: BLE001 - the parts stay; the next run merges them
            pass
        raise
    return merge_manifest(plan, dst, run_id, time.perf_counter() - start)


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
    num_actors, use_gpu = placement.count, placement.use_gpu
    env = _remote_env(src, dst)
    rows_per_call = max(1, min(4 * config.batch_size, math.ceil(len(todo) / (2 * num_actors))))
    each = "GPU" if use_gpu else f"{placement.cpus_each:.2g} CPUs, {placement.threads_each} torch thread(s)"
    log.info(f"stylising {len(todo)} images with {num_actors} actor(s) on {each} each")
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
                               "threads": placement.threads_each, "use_gpu": use_gpu},
        num_cpus=placement.cpus_each, num_gpus=1 if use_gpu else 0, **env,
    )
    try:
        for _ in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            pass  # every row's outcome is already in its manifest part
    except Exception as exc:  # noqa: BLE001 - surface a user error raised inside an actor as one line
        user = _user_error(exc)
        if user is None:
            raise
        raise type(user)(reason(user)) from None


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


