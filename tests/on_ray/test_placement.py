"""One placement policy for training workers and Ray Data actors, on made-up clusters (no Ray)."""

from __future__ import annotations

import pytest

from cvray.errors import ClusterError, ConfigError
from cvray.on_ray.placement import (
    ClusterInfo,
    Placement,
    check_global_batch,
    plan_actors,
    plan_trials,
    plan_workers,
    resolve_gpu,
    tasks_reserve,
)

CPU_LAPTOP = ClusterInfo(cpus=2, gpus=0)
CPU_BOX = ClusterInfo(cpus=16, gpus=0)
GPU_NODE = ClusterInfo(cpus=32, gpus=4)


def test_gpus_are_used_when_present_unless_refused():
    assert resolve_gpu(None, GPU_NODE) and not resolve_gpu(None, CPU_BOX)
    assert not resolve_gpu(False, GPU_NODE)
    assert resolve_gpu(True, GPU_NODE)


@pytest.mark.parametrize("plan", [plan_workers, plan_actors])
def test_gpu_without_gpus_is_one_wording_for_every_job(plan):
    with pytest.raises(ClusterError) as caught:
        plan(CPU_BOX, None, True)
    assert str(caught.value) == "--gpu asked but the Ray cluster has no GPUs (use --no-gpu)"


@pytest.mark.parametrize("plan, flag", [(plan_workers, "--num-workers"), (plan_actors, "--num-actors")])
def test_more_gpu_workers_than_gpus_names_the_flag(plan, flag):
    with pytest.raises(ClusterError, match=f"^{flag} 5 needs 5 GPUs; the cluster has 4$"):
        plan(GPU_NODE, 5, None)


def test_training_workers_default_to_one_per_gpu_with_up_to_4_cpus():
    assert plan_workers(GPU_NODE) == Placement(count=4, use_gpu=True, cpus_each=4.0, threads_each=4)
    assert plan_workers(ClusterInfo(cpus=6, gpus=4)).cpus_each == 1.0  # floor(6 / 4)
    assert plan_workers(GPU_NODE, 2, None, 3).cpus_each == 3.0


def test_training_on_cpus_takes_one_worker_with_every_cpu():
    assert plan_workers(CPU_LAPTOP) == Placement(count=1, use_gpu=False, cpus_each=2.0, threads_each=2)
    assert plan_workers(CPU_BOX, 3) == Placement(count=3, use_gpu=False, cpus_each=5.0, threads_each=5)
    assert plan_workers(GPU_NODE, 2, False).cpus_each == 16.0  # --no-gpu on a GPU cluster


def test_training_workers_that_do_not_fit_are_refused():
    with pytest.raises(ClusterError, match="3 workers x 1 CPUs need 3 CPUs; the cluster has 2"):
        plan_workers(CPU_LAPTOP, 3)
    with pytest.raises(ClusterError, match="need 6 CPUs"):
        plan_workers(CPU_LAPTOP, 2, None, 3)


def test_training_that_streams_data_leaves_cpus_for_the_tasks():
    # 2 CPUs: the workers share what the decode tasks leave (>= 0.5), fractions of a CPU if need be.
    one = plan_workers(CPU_LAPTOP, 1, None, None, leave_cpus_for_tasks=True)
    assert one.cpus_each == 1.5 and one.threads_each == 1
    two = plan_workers(CPU_LAPTOP, 2, None, None, leave_cpus_for_tasks=True)
    assert two.cpus_each == 0.75 and two.threads_each == 1
    assert CPU_LAPTOP.cpus - 2 * two.cpus_each >= tasks_reserve(2)
    with pytest.raises(ClusterError, match="while leaving 0.5 for data tasks"):
        plan_workers(CPU_LAPTOP, 2, None, 1, leave_cpus_for_tasks=True)
    assert plan_workers(GPU_NODE, None, None, None, leave_cpus_for_tasks=True).cpus_each == 4.0


def test_actors_default_to_one_per_two_cpus_and_never_take_the_read_tasks_cpus():
    placement = plan_actors(CPU_BOX)
    assert placement.count == 8 and placement.threads_each == 2
    assert placement.count * placement.cpus_each <= CPU_BOX.cpus - tasks_reserve(CPU_BOX.cpus) + 1e-9
    laptop = plan_actors(CPU_LAPTOP, 2)  # the deadlock case: 2 actors x 1 CPU would hold every CPU
    assert laptop.count == 2 and laptop.threads_each == 1 and 2 * laptop.cpus_each <= 1.5
    assert plan_actors(CPU_LAPTOP, 1, None, 4).threads_each == 4  # threads as asked, reservation capped


def test_gpu_actors_take_one_gpu_and_at_most_one_cpu():
    assert plan_actors(GPU_NODE) == Placement(count=4, use_gpu=True, cpus_each=1.0, threads_each=1)
    assert plan_actors(ClusterInfo(cpus=2, gpus=4), 4).cpus_each == pytest.approx(0.375)  # (2 - 0.5) / 4


def test_an_elastic_range_sizes_workers_for_its_largest_group():
    elastic = plan_workers(CPU_BOX, 4, None, None, min_workers=2)
    assert elastic == Placement(count=4, use_gpu=False, cpus_each=4.0, threads_each=4, min_count=2)
    assert list(elastic.counts()) == [2, 3, 4]
    assert plan_workers(CPU_BOX, 4, None, None, min_workers=4).min_count is None  # 4-4 is a fixed count
    with pytest.raises(ClusterError, match="need 16 CPUs"):  # the largest group must fit the cluster as it is
        plan_workers(CPU_LAPTOP, 4, None, 4, min_workers=1)


def test_the_global_batch_must_split_evenly_over_every_worker_count_a_run_may_have():
    check_global_batch(64, plan_workers(CPU_BOX, 2, None, None, min_workers=1))  # 64 / 1 and 64 / 2
    check_global_batch(48, plan_workers(CPU_BOX, 4, None, None, min_workers=1))  # 1, 2, 3 and 4 divide 48
    with pytest.raises(ConfigError, match=r"^--batch-size 64 is not divisible by 3 workers, which "
                                          r"--num-workers 1-4 may run on \(it is the global batch"):
        check_global_batch(64, plan_workers(CPU_BOX, 4, None, None, min_workers=1))
    with pytest.raises(ConfigError, match=r"^--batch-size 63 is not divisible by 2 workers \(it is the global"):
        check_global_batch(63, plan_workers(CPU_BOX, 2))


@pytest.mark.parametrize("text, counts", [("3", (None, 3)), ("1-4", (1, 4)), ("2-2", (2, 2))])
def test_num_workers_takes_a_count_or_a_range(text, counts):
    import train_cifar

    args = train_cifar.build_parser().parse_args(["--num-workers", text])
    assert args.num_workers == counts
    config = train_cifar.config_from_args(args)
    assert (config.min_workers, config.num_workers) == counts


@pytest.mark.parametrize("text", ["0", "4-2", "0-2", "2-", "a-b", "1-2-3"])
def test_a_bad_num_workers_is_one_line_and_exit_code_2(text, capsys):
    import train_cifar

    with pytest.raises(SystemExit) as caught:
        train_cifar.build_parser().parse_args(["--num-workers", text])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--num-workers" in err, err


def test_default_cpu_shares_fit_on_one_node_of_a_multi_node_cluster():
    """Six CPUs over a 4-CPU and a 2-CPU node: a default share of the whole cluster (6 CPUs for one
    worker, 3 for each of two actors, 5.95 for a trial) would wait for a node that does not exist."""
    two_nodes = ClusterInfo(cpus=6, gpus=0, nodes=2, node_cpus=4)
    assert plan_workers(two_nodes, 1).cpus_each == 4
    assert plan_workers(two_nodes, 1, cpus_per_worker=6).cpus_each == 6  # asked for: the user's call
    assert plan_actors(two_nodes, 1).cpus_each <= 4
    assert plan_trials(two_nodes).workers.cpus_each == 4
    # One node: unchanged (the whole machine).
    assert plan_workers(ClusterInfo(cpus=6, gpus=0), 1).cpus_each == 6
