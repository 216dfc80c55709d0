"""What every folder job shares on Ray Data (bulk stylisation, batch prediction): run a plan with
its manifest kept whole even on Ctrl-C or a crash, and the two-stage pipeline (decode tasks, then
an actor pool) with the credentials the workers need and user errors surfaced as one line.

The jobs bring their stages as plain Python (cvray.style.bulk, cvray.classification.predict);
which files to process, skip or fail is cvray.manifest's plan.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import ray

from cvray.errors import CvrayError
from cvray.folders import Folder
from cvray.manifest import Plan, RunSummary, failure_reason, merge_manifest
from cvray.on_ray.placement import Placement

DECODE_CPUS = 0.25
"""CPUs a read-and-decode task asks for: small, so reads always fit beside the actors."""
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
           "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_PROFILE")


def run_plan(plan: Plan, dst: Folder, run_id: str, execute: Callable[[], None]) -> RunSummary:
    """execute() the plan's work (if any), then merge this run's manifest parts. On Ctrl-C or a
    crash what finished is merged first (the parts stay for the next run if even that fails)."""
    start = time.perf_counter()
    try:
        if plan.todo:
            execute()
    except BaseException:
        try:
            merge_manifest(plan, dst, run_id, time.perf_counter() - start)
        except Exception:  # noqa: BLE001 - the parts stay; the next run merges them
            pass
        raise
    return merge_manifest(plan, dst, run_id, time.perf_counter() - start)


def run_stages(
    todo: list, src: Folder, dst: Folder, placement: Placement, *,
    decode: Callable, decode_kwargs: dict[str, Any], actor: type, actor_kwargs: dict[str, Any],
    rows_per_call: int, items_per_decode_task: int,
) -> None:
    """todo -> decode tasks (DECODE_CPUS each) -> an actor pool sized by `placement` (one GPU per
    actor on GPU placements), drained; every row's outcome is already in its manifest part."""
    env = remote_env(src, dst)
    blocks = min(len(todo), max(2 * placement.count, math.ceil(len(todo) / items_per_decode_task)))
    ds = ray.data.from_items(todo, override_num_blocks=blocks)
    ds = ds.map_batches(decode, batch_format="pyarrow", batch_size=None, num_cpus=DECODE_CPUS,
                        fn_kwargs=decode_kwargs, **env)
    ds = ds.map_batches(
        actor, batch_format="pyarrow", batch_size=rows_per_call,
        compute=ray.data.ActorPoolStrategy(size=placement.count),
        fn_constructor_kwargs={**actor_kwargs, "threads": placement.threads_each, "use_gpu": placement.use_gpu},
        num_cpus=placement.cpus_each, num_gpus=1 if placement.use_gpu else 0, **env,
    )
    try:
        for _ in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            pass
    except Exception as exc:  # noqa: BLE001 - surface a user error raised inside an actor as one line
        user = user_error(exc)
        if user is None:
            raise
        raise type(user)(failure_reason(user)) from None


def describe(placement: Placement) -> str:
    """How each actor runs, for the job's start line."""
    if placement.use_gpu:
        return "GPU"
    return f"{placement.cpus_each:.2g} CPUs, {placement.threads_each} torch thread(s)"


def remote_env(src: Folder, dst: Folder) -> dict:
    """Object-store credentials set where the job starts also reach the Ray workers."""
    if src.is_local and dst.is_local:
        return {}
    env = {k: os.environ[k] for k in AWS_ENV if os.environ.get(k)}
    return {"runtime_env": {"env_vars": env}} if env else {}


def user_error(exc: BaseException) -> CvrayError | None:
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
