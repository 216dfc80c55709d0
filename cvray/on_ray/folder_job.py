"""What every folder job shares on Ray Data (bulk stylisation, batch prediction): run a plan with
its manifest kept whole even on Ctrl-C or a crash, and the two-stage pipeline (decode tasks, then
an actor pool) with the credentials the workers need and user errors surfaced as one line.

The jobs bring their stages as plain Python (cvray.style.bulk, cvray.classification.predict);
which files to process, skip or fail is cvray.manifest's plan.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import ray

from cvray.errors import ClusterError, CvrayError, first_line
from cvray.folders import Folder
from cvray.manifest import ManifestKind, Plan, RunSummary, failure_reason, merge_manifest, read_manifest_state
from cvray.on_ray.placement import Placement

log = logging.getLogger(__name__)

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
    rows_per_call: int, items_per_decode_task: int, kind: ManifestKind, run_id: str,
) -> None:
    """todo -> decode tasks (DECODE_CPUS each) -> an actor pool sized by `placement` (one GPU per
    actor on GPU placements), drained; every row's outcome is already in its manifest part.

    A worker that dies (an actor or task process killed, its node lost) stops the pipeline; the
    files this run has not decided yet (no manifest part of this run) then go through a new
    pipeline, up to ATTEMPTS pipelines in all. Ray Data's own actor restarts are off
    (max_restarts=0): Ray 2.60 logs an error line for every restartable actor built from
    object-store arguments, which Ray Data's actors always are (ray-project/ray#53727), and its
    infinite task retries would hang a job on an image that kills every actor that takes it.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with _quiet_worker_deaths():
                _drain(todo, src, dst, placement, decode, decode_kwargs, actor, actor_kwargs, rows_per_call,
                       items_per_decode_task)
            return
        except Exception as exc:  # noqa: BLE001 - user errors become one line, lost workers a retry
            user = user_error(exc)
            if user is not None:
                raise type(user)(failure_reason(user)) from None
            if not lost_worker(exc):
                raise
            todo = undecided(todo, dst, run_id, kind)
            if not todo:
                return
            if attempt == ATTEMPTS:
                raise ClusterError(
                    f"Ray workers died {ATTEMPTS} times ({first_line(exc)}); {len(todo)} files are left: "
                    "what finished is kept, rerun the same command to resume") from None
            log.warning(f"a Ray worker died ({first_line(exc)}): redoing the {len(todo)} files it left "
                        f"unfinished (attempt {attempt + 1} of {ATTEMPTS})")


ATTEMPTS = 3
"""Pipelines a folder job runs at most when workers die (the first one included)."""
LOST_WORKER = (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError,
               ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
               ray.exceptions.OwnerDiedError)


def _drain(todo, src, dst, placement, decode, decode_kwargs, actor, actor_kwargs, rows_per_call,
           items_per_decode_task) -> None:
    env = remote_env(src, dst)
    blocks = min(len(todo), max(2 * placement.count, math.ceil(len(todo) / items_per_decode_task)))
    ds = ray.data.from_items(todo, override_num_blocks=blocks)
    ds = ds.map_batches(_told_its_node(decode), batch_format="pyarrow", batch_size=None, num_cpus=DECODE_CPUS,
                        fn_kwargs=decode_kwargs, **env)
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for max_restarts yet (its ray_remote_args are deprecated).
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            _actor_told_its_node(actor), batch_format="pyarrow", batch_size=rows_per_call,
            compute=ray.data.ActorPoolStrategy(size=placement.count),
            fn_constructor_kwargs={**actor_kwargs, "threads": placement.threads_each, "use_gpu": placement.use_gpu},
            num_cpus=placement.cpus_each, num_gpus=1 if placement.use_gpu else 0, max_restarts=0, **env,
        )
    for _ in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        pass


def _told_its_node(decode: Callable) -> Callable:
    """`decode` called with node= the Ray node of the task running it (for its manifest rows)."""

    def decode_on_node(batch, **kwargs):
        return decode(batch, node=ray.get_runtime_context().get_node_id(), **kwargs)

    decode_on_node.__name__ = decode_on_node.__qualname__ = decode.__name__  # Ray Data's stage name
    return decode_on_node


def _actor_told_its_node(actor: type) -> type:
    """`actor` built with node= the Ray node it runs on (for its manifest rows); same name, so Ray
    Data names its processes after the job's actor."""

    class ActorOnNode(actor):
        def __init__(self, **kwargs):
            super().__init__(node=ray.get_runtime_context().get_node_id(), **kwargs)

    ActorOnNode.__name__ = ActorOnNode.__qualname__ = actor.__name__
    return ActorOnNode


def exception_chain(exc: BaseException):
    """`exc` and every exception it wraps (Ray's `.cause`, `__cause__`, `__context__`), each once."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]


def lost_worker(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says a Ray worker process or node went away."""
    return any(isinstance(e, LOST_WORKER) for e in exception_chain(exc))


def undecided(todo: list, dst: Folder, run_id: str, kind: ManifestKind) -> list:
    """The items of `todo` that no manifest part of this run decides yet."""
    records, _ = read_manifest_state(dst, kind)
    decided = {rel for rel, r in records.items() if r["run_id"] == run_id}
    return [item for item in todo if item["relpath"] not in decided]


class _DropWorkerDeaths(logging.Filter):
    """Ray Data logs a worker's death as ERRORs with two full tracebacks (and an invitation to
    report a Ray bug) before raising it; run_stages says it in one line of its own instead. Other
    errors keep their tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and lost_worker(record.exc_info[1]):
            return False
        text = str(record.msg)
        return not (text.startswith("Exception occurred in Ray Data or Ray Core internal code")
                    or "actors died during initialization" in text)


@contextlib.contextmanager
def _quiet_worker_deaths():
    """The job's own lines only: no Ray Data progress blocks (as on a local Ray, where the
    workers' RAY_DATA_LOG_LEVEL does it), no worker-death tracebacks or lines. Ray Data's usage probe
    after a failed run logs a DEBUG record with a traceback that its own log handler fails on
    ("--- Logging error ---" on the console), so that logger keeps to INFO."""
    ray.data.DataContext.get_current().print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    usage = logging.getLogger("ray.data._internal.usage.util")
    level = usage.level
    usage.setLevel(logging.INFO)
    loggers = [logging.getLogger(n) for n in ("ray.data.exceptions",
                                              "ray.data._internal.execution.streaming_executor_state",
                                              "ray.data._internal.execution.operators.actor_pool_map_operator")]
    drop = _DropWorkerDeaths()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        usage.setLevel(level)
        for logger in loggers:
            logger.removeFilter(drop)


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

    for e in exception_chain(exc):
        if isinstance(e, CvrayError) and not hasattr(e, "cause"):
            return e
        text = f"{getattr(e, 'error_msg', '')}\n{e}"
        found = re.findall(r"^cvray\.errors\.(\w+Error): (.+)$", text, re.M)
        if found and isinstance(getattr(errors, found[-1][0], None), type):
            return getattr(errors, found[-1][0])(found[-1][1])
    return None
