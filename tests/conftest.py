"""Shared fixtures: one local Ray instance for the whole test run (start-up costs ~10 s), and small
CIFAR-format data."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "jobs"))
# tests/cluster/local_cluster.py: helpers for the clusters cluster/local/start.sh starts. (No
# conftest.py below this one: a second module named conftest would shadow this one for every
# `from conftest import ...`.)
sys.path.insert(0, str(REPO_ROOT / "tests" / "cluster"))

os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by every test that needs one; stopped at the end.

    Yields the GCS address, so subprocess jobs can join it with --address.
    """
    import ray

    from cvray.on_ray.connect import start_local

    if not ray.is_initialized():
        start_local(  # a new Ray: never one that happens to run here
            num_cpus=2,
            resources={"TRAIN_DRIVER": 4},
            log_to_driver=False,
            runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "PYTHONPATH": str(REPO_ROOT)}},
        )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def write_cifar_parquet(path, labels: np.ndarray, pixels_of) -> None:
    """CIFAR-format Parquet: PNG bytes of pixels_of(label) (32x32x3 uint8) for each label."""
    blobs = []
    for label in labels:
        buffer = io.BytesIO()
        Image.fromarray(pixels_of(label)).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    pq.write_table(pa.table({"image": blobs, "label": labels.astype(np.int64)}), path)


def write_parquet_split(path, n: int, seed: int) -> None:
    """CIFAR-format Parquet: 32x32 RGB images whose class tints them (learnable)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    palette = rng.integers(0, 256, (10, 3))
    write_cifar_parquet(path, labels, lambda label: (0.6 * palette[label]
                                                     + 0.4 * rng.integers(0, 256, (32, 32, 3))).astype(np.uint8))


def image_writer(root: Path, seed: int = 0):
    """(rgb, save): rgb(w, h) is a random RGB PIL image; save(rel, image, fmt=None, **kw) writes it
    under `root`, making folders."""
    rng = np.random.default_rng(seed)

    def rgb(w: int, h: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8))

    def save(rel: str, image: Image.Image, fmt: str | None = None, **kw) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, fmt, **kw)

    return rgb, save


def write_bad_files(root: Path, *, zero: str, truncated: str, fake: str, text: str) -> None:
    """The unreadable kinds a folder job must survive: an empty file, a truncated PNG, a non-image
    with an image suffix, and a text file."""
    for rel in (zero, truncated, fake, text):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / zero).write_bytes(b"")
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(png, "PNG")
    (root / truncated).write_bytes(png.getvalue()[:300])
    (root / fake).write_text("not a jpeg")
    (root / text).write_text("hello")


def write_labelled_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> None:
    """train/<class>/ and test/<class>/ of two visibly different classes ("dark" with horizontal
    stripes, "bright" with vertical ones: they survive any image mode), in mixed sizes, modes,
    formats and nesting, plus a corrupt JPEG in train/ and a text file in test/."""
    rng = np.random.default_rng(seed)
    modes = ("RGB", "L", "RGBA", "P", "RGB")
    for split, count in per_class.items():
        for label, name in enumerate(("dark", "bright")):
            for i in range(count):
                h, w = int(rng.integers(48, 96)), int(rng.integers(48, 96))
                y, x = np.mgrid[0:h, 0:w]
                stripes = ((y if label == 0 else x) // 6) % 2
                base = 40 + 150 * label + 40 * stripes
                pixels = np.clip(base[..., None] + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels).convert(modes[i % len(modes)])
                folder = root / split / name / ("nested" if i % 4 == 0 else "")
                folder.mkdir(parents=True, exist_ok=True)
                suffix = "jpg" if image.mode in ("RGB", "L") and i % 2 else "png"
                image.save(folder / f"{split}{i:03d}.{suffix}")
    (root / "train" / "dark" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "test" / "bright" / "notes.txt").write_text("not an image")


def finished_trials(sweep: Path) -> dict[str, float]:
    """A training sweep's finished trials: trial folder -> mtime of its metrics.parquet, for the
    trials whose summary.json is written (the sweep-resume tests check these stay untouched)."""
    return {p.parent.name: (p.parent / "metrics.parquet").stat().st_mtime
            for p in (sweep / "runs").glob("trial-*/summary.json")}


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A labelled image folder: 2 classes x (32 train, 16 test) images of mixed sizes and modes,
    one corrupt file, one text file."""
    root = tmp_path_factory.mktemp("folder")
    write_labelled_folder(root, {"train": 32, "test": 16})
    return root


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    """A CIFAR-10 folder in the Parquet format: 128 train and 64 test images."""
    folder = tmp_path_factory.mktemp("cifar")
    write_parquet_split(folder / "train.parquet", 128, seed=1)
    write_parquet_split(folder / "test.parquet", 64, seed=2)
    return folder


_CLUSTER_PROCESS = """
import json, os, sys
from ray.cluster_utils import Cluster
from cvray.net import free_port
head_cpus, worker_cpus = json.loads(sys.argv[1])
# Ray's own processes (Ray Train's placement-group cleaner) find "their" cluster through RAY_ADDRESS,
# else whichever Ray on this machine started last (see cvray.on_ray.connect.start_local); and the
# State API they use needs this cluster's dashboard, on a port no other test Ray has.
port = free_port()
os.environ.update({"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"127.0.0.1:{port}"})
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "dashboard_host": "127.0.0.1",
                                                        "dashboard_port": free_port()})
nodes = [cluster.add_node(num_cpus=cpus) for cpus in worker_cpus]
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address}), flush=True)
for command in sys.stdin:  # until the test closes stdin (or dies)
    if command.strip() == "kill":  # the newest worker node dies: its raylet and workers
        cluster.remove_node(nodes.pop(), allow_graceful=False)
    else:  # "add CPUS": a new worker node
        nodes.append(cluster.add_node(num_cpus=int(command.split()[1])))
        cluster.wait_for_nodes()
    print("done", flush=True)
cluster.shutdown()
"""


class ClusterProcess:
    """A real multi-node Ray cluster on this machine (ray.cluster_utils), run by its own process so
    a test's driver joins it like any client. `kill_node()` ends the newest worker node at once,
    `add_node(cpus)` adds one; `close()` shuts the cluster down."""

    def __init__(self, head_cpus: int, worker_cpus: list[int]):
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-c", _CLUSTER_PROCESS, json.dumps([head_cpus, worker_cpus])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the test cluster did not start (exit code {self.proc.wait(timeout=60)})")
        self.address = json.loads(line)["address"]

    def _command(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def kill_node(self) -> None:
        self._command("kill")

    def add_node(self, cpus: int) -> None:
        self._command(f"add {cpus}")

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def cluster_process(head_cpus: int, worker_cpus: list[int]):
    """A ClusterProcess for the `with` block; yields its address."""
    cluster = ClusterProcess(head_cpus, worker_cpus)
    try:
        yield cluster.address
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def token_cluster():
    """A local cluster with token auth, from the project's scripts: a head with 4 CPUs (room for
    several small jobs at once) and one worker node with 2. Stopped, and its folder removed, at
    the end of the session."""
    import shutil

    from local_cluster import start_cluster

    cluster = start_cluster("-w", "1", "-c", "4", "-C", "2")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.state, ignore_errors=True)


@pytest.fixture(scope="session")
def two_node_cluster():
    """A real two-node Ray cluster: a head with no CPUs (the node a driver joins) and a worker node
    with 2 CPUs, so every Ray task, actor and training worker runs on another node than the driver's.
    Yields the address; shut down at the end of the session."""
    with cluster_process(0, [2]) as address:
        yield address


@pytest.fixture(scope="session")
def spread_cluster():
    """A real two-node Ray cluster whose both nodes have 2 CPUs (the head included), for tests that
    check work spreads over nodes. Yields the address; shut down at the end of the session."""
    with cluster_process(2, [2]) as address:
        yield address


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    gets: list[str]

    def do_GET(self):
        self.gets.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving the files a test puts in `.folder`; `.url` is its base
    address and `.gets` the paths requested so far (downloads are tested without the internet)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = type("Handler", (_CountingHandler,), {"gets": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(folder=folder, url=f"http://127.0.0.1:{server.server_address[1]}", gets=handler.gets)
    server.shutdown()
    thread.join()
