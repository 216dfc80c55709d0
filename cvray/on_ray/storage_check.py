"""Does every node of the Ray cluster see the run storage?

Ray Train's workers write checkpoints and the run folder's files under --storage-path from
whatever node they run on. A local path that only the driver's machine has (no shared NFS mount
on the workers) would fail deep inside training, or worse, scatter a run over the nodes' own
disks. So before training the driver writes a marker file there and a task pinned to each alive
node reads it back; a node that cannot is named in one line.

URIs (s3://, gs://, ...) are skipped: every node reaches them through pyarrow with its own
credentials, and Ray Train checks it can write there itself.
"""

from __future__ import annotations

import os
import uuid

from cvray import storage
from cvray.errors import ClusterError

MARKER_PREFIX = ".cvray-storage-check-"
CHECK_TIMEOUT_S = 120.0
"""How long the per-node reads may take together (a node's first task starts a Python worker); a
node that has not answered by then counts as not seeing the storage."""


def read_marker(path: str) -> str | None:
    """The marker's text as this node sees it (None if it cannot read it). Runs on each node."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def check_storage_visible(storage_path: str) -> None:
    """Raise ClusterError naming each alive node that cannot read a marker written to
    `storage_path` here. Needs a connected Ray. A URI passes untested, and so does a one-node
    cluster that this driver runs on (its view is the node's)."""
    if storage.is_uri(storage_path):
        return
    import ray
    from ray.util.client import ray as client
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2 and not client.is_connected():
        return
    folder = os.path.abspath(os.path.expanduser(storage_path))
    created = not os.path.exists(folder)
    os.makedirs(folder, exist_ok=True)
    token = uuid.uuid4().hex
    marker = os.path.join(folder, MARKER_PREFIX + token)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(token)
    try:
        # num_cpus=0: the check runs even on a node whose CPUs are all taken (or a CPU-less head).
        read = ray.remote(num_cpus=0, max_retries=0)(read_marker)
        refs = [read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
                for n in nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=CHECK_TIMEOUT_S)
        seen = [_result(ref) if ref in ready else None for ref in refs]
    finally:
        os.remove(marker)
    blind = [_node_name(n) for n, text in zip(nodes, seen, strict=True) if text != token]
    if blind:
        if created:  # a refused run leaves nothing behind
            os.rmdir(folder)
        raise ClusterError(
            f"--storage-path {folder} is not visible on {len(blind)} of {len(nodes)} nodes ({', '.join(blind)}): "
            "use a folder every node mounts at that path (NFS), or an s3://... URI"
        )


def _result(ref) -> str | None:
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError:  # the node died, or could not start the task: it saw nothing
        return None


def _node_name(node: dict) -> str:
    return f"node {node['NodeID'][:12]} at {node.get('NodeManagerAddress', '?')}"
