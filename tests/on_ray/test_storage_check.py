"""Multi-node runs: a job refuses a --storage-path that a node cannot see (the worker node runs in
its own mount namespace, with an empty tmpfs over the storage folder), and on a cluster whose
nodes share it, training workers go to both nodes and the run converges."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cluster_process

from cvray.classification.runs import read_metrics
from cvray.on_ray.storage_check import check_storage_visible

REPO = Path(__file__).resolve().parents[2]
NODE_JOIN_TIMEOUT_S = 120


def job(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, str(REPO / "jobs" / "train_cifar.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=timeout)


def alive_nodes(address: str) -> list:
    from ray.util.state import list_nodes

    return [n for n in list_nodes(address=address) if n.state == "ALIVE"]


def can_unshare_mounts() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.fixture(scope="module")
def blind_node_cluster(tmp_path_factory):
    """A head node (1 CPU) that sees the storage folder, and a worker node (1 CPU, joined with
    `ray start --block`) in its own mount namespace where that folder is an empty tmpfs.
    Yields (address, storage folder, the blind node's id)."""
    if not can_unshare_mounts():
        pytest.skip("needs `unshare --mount` (root, or user namespaces): see docs/reliability.md")
    storage = tmp_path_factory.mktemp("shared")
    with cluster_process(1, []) as address:
        (head,) = alive_nodes(address)
        script = (f"mount -t tmpfs cvray-test {shlex.quote(str(storage))} && "
                  f"exec ray start --address {shlex.quote(address)} --num-cpus 1 --block")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        node = subprocess.Popen(["unshare", "--mount", "sh", "-c", script], start_new_session=True, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + NODE_JOIN_TIMEOUT_S
            while len(nodes := alive_nodes(address)) < 2 and node.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)  # waiting for the node to register, not for a result
            assert len(nodes) == 2, f"the namespaced node did not join (exit code {node.poll()})"
            yield address, storage, next(n.node_id for n in nodes if n.node_id != head.node_id)
        finally:
            os.killpg(node.pid, signal.SIGTERM)  # `ray start --block` stops the node's processes
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()


@pytest.mark.slow
def test_a_node_that_cannot_see_the_storage_path_is_named_and_nothing_is_written(blind_node_cluster, tiny_cifar):
    address, storage, blind = blind_node_cluster
    result = job("--address", address, "--data-dir", tiny_cifar, "--storage-path", storage / "runs", "--no-gpu",
                 "--epochs", "1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"--storage-path {storage / 'runs'} is not visible on 1 of 2 nodes (node {blind[:12]} at " in result.stderr
    assert list(storage.iterdir()) == []  # no run folder, no marker left


def test_uri_storage_is_left_to_pyarrow():
    check_storage_visible("s3://bucket/runs?endpoint_override=127.0.0.1:1")  # no Ray, no network: returns


@pytest.mark.slow
def test_two_nodes_train_one_worker_each_and_converge(spread_cluster, tiny_cifar, tmp_path):
    from ray.util.state import list_actors

    def training_workers() -> dict[str, str]:
        actors = list_actors(address=spread_cluster, filters=[("class_name", "=", "RayTrainWorker")], limit=10000)
        return {a.actor_id: a.node_id for a in actors}

    before = training_workers()
    result = job("--address", spread_cluster, "--data-dir", tiny_cifar, "--storage-path", tmp_path, "--name", "run",
                 "--no-gpu", "--num-workers", "2", "--batch-size", "16", "--epochs", "3", "--lr", "0.003")
    assert result.returncode == 0, result.stdout + result.stderr
    ours = {a: node for a, node in training_workers().items() if a not in before}
    assert len(ours) == 2 and len(set(ours.values())) == 2, ours  # one worker on each node (2 CPUs each)
    rows = read_metrics(str(tmp_path / "run"))
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(r["train_examples"] == 128 for r in rows)
    # Ten classes whose colour tints each image: well above chance (0.1) once trained on both nodes.
    assert rows[-1]["train_acc"] > 0.3 and rows[-1]["test_acc"] > 0.2, rows
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["devices"] == ["cpu", "cpu"]
