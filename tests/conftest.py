"""Shared fixtures: one local Ray instance for the whole test run (start-up costs ~10 s)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "jobs"))

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
