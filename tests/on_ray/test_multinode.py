"""Jobs on a real two-node cluster (spread_cluster: 2 CPUs on each node), each driven as a user
runs it (`python jobs/X.py --address ...` in a subprocess): bulk stylisation reading and writing
the moto S3 emulator spreads its actors over both nodes, has no Ray core error line on its
console, and outlives the emulator stopped and started again mid-run. Which node a process runs
on is its parent raylet (one per node) on this machine.

Predict's actors and a sweep's trials are checked on both nodes in the runs that
test_bulk_faults.py and test_sweep_faults.py make anyway (one cluster run each, for CI time);
the helpers here are shared with them."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import image_writer
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.heavy]

REPO = Path(__file__).resolve().parents[2]
STYLE_FAST = ["--size", "48", "--iterations", "2", "--weights", "random", "--precision", "fp32"]


# ------------------------------------------------------------------ helpers (shared)


def start_job(script: str, argv: list, address: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    """`python jobs/<script> ARGV --address ADDRESS` in its own process group, output to `log`."""
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    environment.update(env or {})
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, str(REPO / "jobs" / script), *map(str, argv), "--address", address],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=environment,
                                start_new_session=True)


def run_job(script: str, argv: list, address: str, log: Path, env: dict | None = None,
            timeout_s: float = 300) -> tuple[int, str]:
    """Run a job to its end: (exit code, this run's console output)."""
    start = log.stat().st_size if log.exists() else 0
    proc = start_job(script, argv, address, log, env)
    try:
        code = proc.wait(timeout=timeout_s)
    finally:
        stop(proc)
    return code, log.read_bytes()[start:].decode("utf-8", "replace")


def stop(proc: subprocess.Popen) -> None:
    """Kill a job's process group if it still runs (a test that failed half-way)."""
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
        proc.wait()


def wait_for(predicate, proc: subprocess.Popen, log: Path, timeout_s: float = 240, poll=None):
    """Poll until predicate() is true (its value is returned); fails if the job ends first or
    `timeout_s` passes (a bound, not a guess: the predicate is what the test waits for)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if poll:
            poll()
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the job ended (exit {proc.returncode}) before the wait was over:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"waited {timeout_s} s in vain:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def _processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} of this machine's processes, from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, ValueError, IndexError):
            continue  # ended while being looked at
        found[int(entry)] = (parent, cmdline)
    return found


def cluster_processes(address: str, title: str) -> dict[int, int]:
    """{pid: its node's raylet pid} of this cluster's live processes whose title contains `title`
    (Ray names an actor's process ray::<class>); other Rays on the machine are not looked at."""
    procs = _processes()
    raylets = {pid for pid, (_, cmd) in procs.items()
               if cmd.split(" ", 1)[0].endswith("/raylet") and f"--gcs-address={address}" in cmd}
    found = {}
    for pid, (parent, cmd) in procs.items():
        if title not in cmd:
            continue
        ancestor = parent
        while ancestor > 1 and ancestor not in raylets and ancestor in procs:
            ancestor = procs[ancestor][0]
        if ancestor in raylets:
            found[pid] = ancestor
    return found


def follow(address: str, title: str, seen: dict[int, int]):
    """A poll function for wait_for that adds the processes named `title` to `seen`."""
    return lambda: seen.update(cluster_processes(address, title))


def write_images(root: Path, count: int, seed: int = 0) -> list[str]:
    """`count` random RGB PNGs of 48x40 px under root (some nested); their relative paths."""
    _, save = image_writer(root, seed)
    rng = np.random.default_rng(seed)
    rels = [f"{'sub/' if i % 3 == 0 else ''}img{i}.png" for i in range(count)]
    for rel in rels:
        save(rel, Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)))
    return rels


def manifest_rows(path) -> dict[str, dict]:
    rows = pq.read_table(path).to_pylist()
    assert len(rows) == len({r["relpath"] for r in rows}), "a file recorded twice"
    return {r["relpath"]: r for r in rows}


@pytest.fixture(scope="module")
def style_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("style") / "style.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8)).save(path)
    return path


BUCKET = f"multinode-{uuid.uuid4().hex[:8]}"
"""This module's own bucket: moto keeps every server's objects in one store per process, so another
test's bucket of the same name (test_bulk's "photos") would hold its files and manifest."""


def moto_server():
    """moto's S3 emulator on 127.0.0.1 (a free port) with the bucket BUCKET; (server, client, port)."""
    server_mod = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    return server, client, port


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
"""What the job's environment holds; the job hands it to the Ray workers of both nodes
(cvray.on_ray.folder_job.remote_env): the cluster itself started without it."""


def s3_uri(port: int, key: str) -> str:
    return f"s3://{BUCKET}/{key}?endpoint_override=127.0.0.1:{port}&scheme=http"


# ------------------------------------------------------------------ the tests


def test_bulk_stylisation_on_s3_spreads_over_both_nodes_and_outlives_the_store_restarting(
        spread_cluster, tmp_path, style_image):
    """One S3 run (for CI time) checks three things: actors on both nodes stylise (each manifest row
    names the node that decided it), workers on both reach the store with the job's credentials,
    and the store stopped and started again on the same address while actors write (the fault of
    test_bulk_faults' family) never leaves a manifest row claiming an object that is not there."""
    from moto.server import ThreadedMotoServer

    server, client, port = moto_server()
    try:
        rels = write_images(tmp_path / "in", 12)  # enough work that the store's restart falls inside the run
        for rel in rels:
            client.put_object(Bucket=BUCKET, Key=f"in/{rel}", Body=(tmp_path / "in" / rel).read_bytes())
        argv = ["--input", s3_uri(port, "in"), "--output", s3_uri(port, "out"), "--style", style_image,
                *STYLE_FAST, "--iterations", "10", "--batch-size", "1"]
        log = tmp_path / "job.log"

        def images_out() -> set[str]:
            listing = client.list_objects_v2(Bucket=BUCKET, Prefix="out/").get("Contents", [])
            return {o["Key"][4:] for o in listing if not o["Key"].startswith("out/_cvray/")}

        proc = start_job("stylize_folder.py", argv, spread_cluster, log, S3_ENV)
        try:
            wait_for(images_out, proc, log)
            server.stop()  # the store goes away while actors write ...
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()  # ... and comes back on the same address, its objects kept
            proc.wait(timeout=300)
        finally:
            stop(proc)
        console = log.read_text()
        # Ray Data's actors are built without restarts: no Ray core error line about their arguments.
        assert "constructor arguments in the object store" not in console and "Traceback" not in console, console
        # The writes were retried (exit 0), or the job stopped with one clear line (exit 2) ...
        assert proc.returncode in (0, 2), console
        if proc.returncode == 2:
            assert "error: cannot write" in console, console
            code, console = run_job("stylize_folder.py", argv, spread_cluster, log, S3_ENV)  # ... and the rerun ends it
            assert code == 0, console
        assert "failed 0," in console
        assert images_out() == set(rels)
        manifest = client.get_object(Bucket=BUCKET, Key="out/_cvray/manifest.parquet")["Body"].read()
        rows = manifest_rows(io.BytesIO(manifest))
        assert sorted(rows) == sorted(rels) and {r["status"] for r in rows.values()} == {"done"}
        assert len({r["node"] for r in rows.values()}) == 2, rows  # both nodes' actors stylised
        for rel in rows:  # every recorded object is there, whole
            with Image.open(io.BytesIO(client.get_object(Bucket=BUCKET, Key=f"out/{rel}")["Body"].read())) as img:
                img.load()
                assert img.size == (48, 40)
    finally:
        server.stop()
