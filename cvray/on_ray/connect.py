"""Connecting to Ray: join a cluster or start a local one, and describe it (Ray glue shared by
every job). Placement decisions from that description are cvray.on_ray.placement's."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from pathlib import Path

from cvray.errors import ClusterError, first_line
from cvray.net import free_port
from cvray.on_ray.placement import ClusterInfo

CVRAY_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])

def connect(address: str | None = None, *, quiet: bool = True) -> ClusterInfo:
    """Join a Ray cluster, or start a local one, and describe it.

    address: None -> RAY_ADDRESS if set (what `ray job submit` gives a job), else a local Ray
    started here (the embedded default); "auto" -> a running local cluster; "HOST:PORT" or
    "ray://HOST:PORT" -> that cluster. An unreachable address is a ClusterError, not a hang.
    A Ray already initialised in this process is reused as it is.
    """
    import ray

    if not ray.is_initialized():
        _plain_worker_lines()
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs = {"log_to_driver": True, "logging_level": "WARNING" if quiet else "INFO"}
        if address is None or address == "local":
            # address="local": a new Ray even if a `ray start` cluster (or a stale record of one)
            # exists here; `--address auto` joins that one. Ray Train's state checks need the
            # dashboard: keep its web server on loopback. PYTHONPATH lets workers import cvray
            # from a checkout that isn't pip-installed.
            start_local(runtime_env=_runtime_env_for_local(quiet), **kwargs)
        else:
            check_reachable(address)
            try:
                with _loopback_kept(_is_loopback(address)):
                    ray.init(address=address, runtime_env=_runtime_env_for_remote(), **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(f"cannot connect to Ray at {address}: {first_line(exc)}{_auth_hint(exc)}") from None
    resources = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return ClusterInfo(
        cpus=float(resources.get("CPU", 0.0)), gpus=float(resources.get("GPU", 0.0)),
        nodes=len(alive), address=ray.get_runtime_context().gcs_address,
        node_cpus=max((float(n.get("Resources", {}).get("CPU", 0.0)) for n in alive), default=None),
    )


PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def start_local(**init_kwargs) -> None:
    """ray.init a new one-machine Ray that listens on 127.0.0.1 only and whose own processes know
    its address.

    Code inside the cluster that uses Ray's State API without an address (Ray Train's placement-
    group cleaner polls it all run long) finds "its" cluster through RAY_ADDRESS, else through
    `ray start`'s record or a scan of this machine, which picks another Ray running here, or
    fails with a traceback. So the GCS port is chosen first and both variables are set while Ray's
    processes are started (they inherit them), then restored in this process.
    Ray turns token auth on for a new local Ray and logs a WARNING saying so on every run, a line
    the user can do nothing about: that one logger is muted while Ray starts (auth stays on).
    A one-machine Ray has no node to preempt: Ray Train's preemption watcher (one more actor
    process per worker group, ~2 s of CPU to start) stays off for the fits of this process, unless
    RAY_TRAIN_ENABLE_PREEMPTION_WATCHER is set (Ray Train hands the variable to its controller).
    """
    import ray

    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    port = free_port()
    env = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        with _loopback_kept(True), _muted("ray._private.authentication.authentication_token_setup"):
            ray.init(address="local", dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", **init_kwargs)
    finally:
        _restore_env(saved)


def _plain_worker_lines() -> None:
    """Worker lines as the worker wrote them: no "(RayTrainWorker pid=...)" prefix (our workers
    print only the job's own lines: epochs, progress, warnings) and no colour codes unless stdout
    is a terminal (Ray colours the prefix regardless). RAY_DISABLE_WORKER_LOG_PREFIX=0 or
    RAY_COLOR_PREFIX=1 in the environment keep Ray's way."""
    from ray._private import ray_constants

    if os.environ.get("RAY_DISABLE_WORKER_LOG_PREFIX") != "0":
        ray_constants.RAY_DISABLE_WORKER_LOG_PREFIX = True  # read by ray.init; Ray reads the variable at import
    if not _is_terminal(sys.stdout):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


@contextlib.contextmanager
def _muted(logger_name: str):
    logger = logging.getLogger(logger_name)
    saved = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(saved)


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rstrip("/").rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def _loopback_kept(on: bool):
    """Keep 127.0.0.1 as this node's address while Ray starts or connects.

    Ray (2.60, Linux) rewrites 127.0.0.1 into the machine's outward IP whether it comes from
    `_node_ip_address` or an address to join, unless it believes multi-node clusters are off
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0). With the rewrite its gRPC servers (GCS, raylet, object
    manager, every worker) listen on all interfaces; with the node at 127.0.0.1 they listen there
    only. The variable reaches Ray's processes (started in here) through the environment, and this
    process through the constant Ray read from it at import.
    """
    if not on:
        yield
        return
    from ray._private import ray_constants

    saved_env = {ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        _restore_env(saved_env)


def _restore_env(saved: dict) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _runtime_env_for_local(quiet: bool = True) -> dict:
    root = os.path.dirname(CVRAY_PACKAGE_DIR)
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    # No preemption on a one-machine Ray: skip Ray Train's preemption watcher, whose actor logs a
    # spurious core_worker error line on every run (Ray 2.60). Quiet: Ray Data's INFO lines (two per
    # dataset execution, from actors we do not own) stay in Ray's log files.
    env = {"PYTHONPATH": os.pathsep.join(paths), "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    if quiet:
        env["RAY_DATA_LOG_LEVEL"] = "WARNING"
    return {"env_vars": env}


def _runtime_env_for_remote() -> dict | None:
    """Make cvray importable on a cluster that doesn't have it installed.

    Inside `ray job submit --working-dir .` the job's working_dir already carries cvray; a
    driver connecting from elsewhere ships the package itself as a py_module.
    """
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return None
    return {"py_modules": [CVRAY_PACKAGE_DIR], "excludes": ["__pycache__"]}


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast on a wrong HOST:PORT instead of Ray's long reconnect loop (no Ray needed, so a
    job can check it before slow work). None, "local" and "auto" need no check."""
    if address in (None, "", "auto", "local"):
        return
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ClusterError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}") from None


def _auth_hint(exc: BaseException) -> str:
    text = f"{type(exc).__name__} {exc}".lower()
    if "auth" in text or "token" in text:
        return " (this cluster uses token auth: set RAY_AUTH_MODE=token and its token on the client)"
    return ""
