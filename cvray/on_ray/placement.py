"""Where Ray work goes: how many training workers or actors, GPU or CPU, and how many CPUs each.

One policy for every job, decided from a description of the cluster (ClusterInfo) before
anything is scheduled, with one wording for each mistake. Pure Python (no Ray import), so it is
unit-tested with made-up clusters.

The rules:
- GPUs are used when the cluster has them, unless the job says --no-gpu; --gpu on a cluster
  without GPUs is an error. A GPU worker or actor takes one whole GPU.
- The default count is one per GPU; on CPUs, one training worker (DDP on CPUs rarely pays) or
  one actor per two CPUs.
- CPUs per worker (also its torch thread count): the fair share of the cluster, whole CPUs, up
  to 4 beside a GPU. Actors (and training that streams its data through Ray Data) never reserve
  the CPUs that read tasks need: max(0.5, 10%) of the cluster stays free, else Ray Data waits
  forever for a CPU the actors hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cvray.errors import ClusterError, ConfigError

GPU_WORKER_MAX_CPUS = 4
"""CPUs a GPU training worker takes by default, at most (its data loading and Python)."""


@dataclass(frozen=True)
class ClusterInfo:
    """What placement needs to know about a Ray cluster (from cvray.on_ray.connect.connect)."""

    cpus: float
    gpus: float
    nodes: int = 1
    address: str = ""
    node_cpus: float | None = None
    """CPUs of the largest node (None: one node, all of `cpus`). A worker or actor runs on one node,
    so default CPU shares never exceed it (else Ray waits for a node that does not exist)."""

    def cap(self, cpus: float) -> float:
        """`cpus`, at most one node's CPUs."""
        return cpus if self.node_cpus is None else min(cpus, max(self.node_cpus, 0.1))


@dataclass(frozen=True)
class Placement:
    count: int
    """Training workers or actors."""
    use_gpu: bool
    cpus_each: float
    """CPUs each reserves from Ray."""
    threads_each: int
    """torch threads each runs (Ray sets OMP_NUM_THREADS to the reservation, which may be fractional)."""
    min_count: int | None = None
    """Elastic training workers: Ray Train runs between min_count and count of them (None: count)."""

    def counts(self) -> range:
        """Every worker count the run may have."""
        return range(self.min_count or self.count, self.count + 1)


def resolve_gpu(use_gpu: bool | None, cluster: ClusterInfo) -> bool:
    """--gpu / --no-gpu / default (GPUs when the cluster has them)."""
    if use_gpu is None:
        return cluster.gpus >= 1
    if use_gpu and cluster.gpus < 1:
        raise ClusterError("--gpu asked but the Ray cluster has no GPUs (use --no-gpu)")
    return use_gpu


def tasks_reserve(cluster_cpus: float) -> float:
    """CPUs left free for Ray Data's read and decode tasks."""
    return max(0.5, 0.1 * cluster_cpus)


def plan_workers(
    cluster: ClusterInfo, num_workers: int | None = None, use_gpu: bool | None = None,
    cpus_per_worker: float | None = None, *, leave_cpus_for_tasks: bool = False, min_workers: int | None = None,
) -> Placement:
    """Ray Train workers (flags --num-workers, --gpu/--no-gpu, --cpus-per-worker).

    min_workers: elastic (--num-workers MIN-MAX, num_workers the MAX): each worker's CPUs are
    sized for the most workers, so the largest group fits the cluster as it is now.

    leave_cpus_for_tasks: the workers read a Ray Data stream, whose decode tasks need CPUs of
    their own; the workers then share what is left, in fractions of a CPU if need be.
    """
    use_gpu = resolve_gpu(use_gpu, cluster)
    count = _count(num_workers, use_gpu, cluster, "--num-workers", cpu_default=1)
    available = cluster.cpus - (tasks_reserve(cluster.cpus) if leave_cpus_for_tasks else 0.0)
    share = available / count if leave_cpus_for_tasks else max(1, math.floor(available / count))
    default = cluster.cap(min(GPU_WORKER_MAX_CPUS, share) if use_gpu else share)
    cpus = cpus_per_worker or default
    if cpus * count > available + 1e-9:
        left = f" while leaving {cluster.cpus - available:g} for data tasks" if leave_cpus_for_tasks else ""
        raise ClusterError(
            f"{count} workers x {cpus:g} CPUs need {count * cpus:g} CPUs{left}; the cluster has {cluster.cpus:g} "
            "(use fewer --num-workers or --cpus-per-worker)"
        )
    elastic = min_workers if min_workers is not None and min_workers < count else None
    return Placement(count, use_gpu, float(cpus), max(1, math.floor(cpus)), elastic)


def check_global_batch(batch_size: int, placement: Placement) -> None:
    """The global batch is split evenly over the workers, whatever their number (an elastic run
    changes it on a restart): refuse a worker count that does not divide it."""
    bad = [n for n in placement.counts() if batch_size % n]
    if not bad:
        return
    if placement.min_count is None:
        raise ConfigError(
            f"--batch-size {batch_size} is not divisible by {placement.count} workers "
            f"(it is the global batch; each worker takes batch_size / workers)"
        )
    raise ConfigError(
        f"--batch-size {batch_size} is not divisible by {', '.join(map(str, bad))} workers, which "
        f"--num-workers {placement.min_count}-{placement.count} may run on (it is the global batch, "
        "fixed for the run: pick a batch every count divides, or a narrower range)"
    )


def plan_actors(
    cluster: ClusterInfo, num_actors: int | None = None, use_gpu: bool | None = None,
    cpus_per_actor: float | None = None,
) -> Placement:
    """Ray Data actors (flags --num-actors, --gpu/--no-gpu, --cpus-per-actor). The reservation is
    capped so read tasks always fit beside the actors; the thread count is what was asked for."""
    use_gpu = resolve_gpu(use_gpu, cluster)
    count = _count(num_actors, use_gpu, cluster, "--num-actors", cpu_default=max(1, int(cluster.cpus) // 2))
    free = max(0.1, (cluster.cpus - tasks_reserve(cluster.cpus)) / count)
    if use_gpu:
        return Placement(count, True, min(1.0, free), 1)
    want = cpus_per_actor if cpus_per_actor is not None else cluster.cap(cluster.cpus / count)
    return Placement(count, False, min(want, free), max(1, int(want)))


DRIVER_CPUS = 0.05
"""CPUs each sweep trial's driver (a Tune function that only launches Ray Train and waits)
reserves: a small fraction, so drivers never take the CPUs their workers need, on any cluster (no
custom resource it may lack)."""


@dataclass(frozen=True)
class TrialPlan:
    """How a sweep places its trials: each trial's Ray Train workers, and trials run at once."""

    workers: Placement
    concurrency: int


def plan_trials(
    cluster: ClusterInfo, num_workers: int | None = None, use_gpu: bool | None = None,
    cpus_per_worker: float | None = None, max_concurrent: int | None = None,
) -> TrialPlan:
    """Sweep trials (flags --num-workers, --gpu/--no-gpu, --cpus-per-worker, --max-concurrent).

    A trial trains on one worker unless told otherwise. On GPUs as many trials run at once as
    the GPUs hold (each worker one GPU); on CPUs one at a time by default (each trial's torch
    threads take every CPU; more at once only share them). Every trial's driver reserves
    DRIVER_CPUS next to its workers; trials beyond the concurrency queue.
    """
    use_gpu = resolve_gpu(use_gpu, cluster)
    count = _count(num_workers or 1, use_gpu, cluster, "--num-workers", cpu_default=1)
    concurrency = max_concurrent or (max(1, int(cluster.gpus) // count) if use_gpu else 1)
    if use_gpu:
        concurrency = min(concurrency, max(1, int(cluster.gpus) // count))
    share = (cluster.cpus - concurrency * DRIVER_CPUS) / (concurrency * count)
    default = cluster.cap(min(GPU_WORKER_MAX_CPUS, max(1, math.floor(share))) if use_gpu else share)
    cpus = cpus_per_worker or default
    need = count * cpus + DRIVER_CPUS
    if need > cluster.cpus + 1e-9:
        raise ClusterError(
            f"one trial needs {need:g} CPUs ({count} workers x {cpus:g} + its driver); the cluster has "
            f"{cluster.cpus:g} (use fewer --num-workers or --cpus-per-worker)")
    concurrency = max(1, min(concurrency, math.floor((cluster.cpus + 1e-9) / need)))
    # Threads: the nearest whole number (a 1.95-CPU share runs 2 threads: the driver barely runs).
    return TrialPlan(Placement(count, use_gpu, float(cpus), max(1, round(cpus))), concurrency)


def _count(requested: int | None, use_gpu: bool, cluster: ClusterInfo, flag: str, cpu_default: int) -> int:
    count = requested or (int(cluster.gpus) if use_gpu else cpu_default)
    if use_gpu and count > cluster.gpus:
        raise ClusterError(f"{flag} {count} needs {count} GPUs; the cluster has {cluster.gpus:g}")
    return count
