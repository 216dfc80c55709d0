"""The fine-tuning benchmarks at their smallest sizes: benchmarks/gpu_finetune.py --tiny with Ray
made unimportable (the GPU host has no Ray), benchmarks/finetune_input.py and
benchmarks/finetune_transforms.py. Each prints one JSON object with the keys the README's figures
come from, and every rate is positive. No timing assertions: the machine may be busy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
# As tests/test_no_ray.py: runs `python SCRIPT ARGS...` with every `import ray` failing.
WITHOUT_RAY = (
    "import os, runpy, sys; sys.modules['ray'] = None; path = sys.argv[1]; sys.argv = sys.argv[1:]; "
    "sys.path.insert(0, os.path.dirname(os.path.abspath(path))); runpy.run_path(path, run_name='__main__')"
)


def run_script(*argv: str, without_ray: bool = False, timeout: float = 300) -> dict:
    """Run a benchmark script; its stdout must be exactly one JSON object."""
    prefix = ["-c", WITHOUT_RAY] if without_ray else []
    proc = subprocess.run([sys.executable, *prefix, *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    """DATA/images/{content,style}: smooth noisy "photos", some at least 800 px long (the scripts
    draw their large images from those), so the tests need no shared data."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for sub, sizes in (("content", [(900, 600), (400, 300), (500, 350)]), ("style", [(820, 820), (450, 380)])):
        (root / "images" / sub).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            ys, xs = np.mgrid[0:h, 0:w]
            base = np.stack([ys * 200 / h, xs * 180 / w + 40, (ys + xs) * 90 / (h + w) + 60], axis=-1)
            pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / sub / f"p{i}.jpg", quality=90)
    return str(root)


def test_gpu_finetune_runs_tiny_on_cpu_without_ray(tmp_path, photos):
    report = run_script(str(BENCHMARKS / "gpu_finetune.py"), "--tiny", "--out", str(tmp_path), "--data", photos,
                        without_ray=True)
    assert report == json.loads((tmp_path / "gpu_finetune.json").read_text())
    assert report["tiny"] and report["skipped"] == []
    (run,) = report["finetune"]
    assert "error" not in run, run
    assert run["crop"] == 64 and run["epochs"] == 2 and run["train_images"] == report["folder"]["train_images"]
    first, steady = run["first_epoch"], run["steady"]
    assert first["images_per_sec"] > 0 and first["decode_seconds"] > 0 and first["train_seconds"] > 0
    assert steady["images_per_sec_median"] > 0 and len(steady["per_epoch"]) == 1
    assert run["parts"]["input_pipeline_images_per_sec"] > 0 and run["parts"]["train_step_only_images_per_sec"] > 0
    predict = report["predict"]
    assert "error" not in predict, predict
    images = report["folder"]["train_images"] + report["folder"]["test_images"]
    assert predict["images"] == predict["done"] == images
    for key in ("decode_images_per_sec", "actor_images_per_sec", "predict_arrays_images_per_sec",
                "decode_then_actor_images_per_sec"):
        assert predict[key] > 0, key
    assert report["steady_images_per_sec"] == steady["images_per_sec_median"]


def test_finetune_input_and_transforms_run_small(photos):
    report = run_script(str(BENCHMARKS / "finetune_input.py"), "--images", "8", "--rounds", "1", "--data", photos,
                        "--num-workers", "0,2", "--cvray-threads", "1")
    assert report["folder"]["train_images"] == report["train_images_per_epoch"] == 8
    for split in ("train", "eval"):
        for side, keys in (("lab", ("workers_0", "workers_2")), ("cvray", ("threads_1",))):
            for key in keys:
                assert report[side][split][key]["samples_per_sec_median"] > 0, (side, split, key)
    assert report["cvray"]["first_epoch"]["samples_per_sec"] > 0
    assert report["cvray"]["decode"]["seconds"] > 0 and report["cvray"]["decode"]["decode_size"] == 288
    assert set(report["ratio"]) >= {"steady_train", "first_epoch", "eval", "five_epochs_with_eval"}
    assert all(report["ratio"][k] > 0 for k in ("steady_train", "first_epoch", "eval", "five_epochs_with_eval"))
    environment = report["environment"]
    assert environment["cpu_count"] >= 1 and len(environment["loadavg_1min_start_end"]) == 2
    assert {"torch", "torchvision", "pillow", "shared_machine"} <= set(environment)

    report = run_script(str(BENCHMARKS / "finetune_transforms.py"), "--images", "3", "--boxes", "2", "--data", photos,
                        "--sizes", "224,256")
    assert set(report["by_decode_size"]) == {"224", "256", "full"}
    for size, row in report["by_decode_size"].items():
        for name in ("eval", "train"):
            assert row[name]["psnr_db"] > 0 and row[name]["mean_abs_diff"] >= 0, (size, name)
        if size != "full":
            assert row["decode"]["psnr_db"] > 0 and row["ragged_bytes_per_image"] > 0
    assert report["recommended_decode_size"] in (224, 256)
    assert report["default_decode_size_today"] == 256
