"""The core imports without Ray, by folder: every module outside cvray/on_ray/, and every GPU
benchmark script (the GPU host has no Ray), with Ray made unimportable. Tiny CPU runs of the GPU
scripts check that nothing they call drags Ray in later."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import cvray

REPO = Path(__file__).resolve().parents[1]
RAY_FOLDER = "cvray.on_ray"
GPU_SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("gpu_*.py"))
# Runs a script as `python SCRIPT ARGS...` would, with `import ray` failing: None in sys.modules
# makes every `import ray` / `import ray.x` raise ImportError.
WITHOUT_RAY = (
    "import os, runpy, sys; sys.modules['ray'] = None; path = sys.argv[1]; sys.argv = sys.argv[1:]; "
    "sys.path.insert(0, os.path.dirname(os.path.abspath(path))); runpy.run_path(path, run_name='__main__')"
)


def run_without_ray(script: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(script), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def core_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(cvray.__path__, "cvray.")]
    return [n for n in names if n != RAY_FOLDER and not n.startswith(RAY_FOLDER + ".")]


def test_every_module_outside_the_ray_folder_imports_without_ray():
    modules = core_modules()
    assert "cvray.classification.worker" in modules and "cvray.style.bulk" in modules
    code = (
        "import importlib, sys; sys.modules['ray'] = None\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(len([m for m in sys.modules if m.startswith('cvray')]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # and the blocker works: the Ray folder does need Ray
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.modules['ray'] = None; import cvray.on_ray.training"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode != 0 and "ray" in proc.stderr


@pytest.mark.parametrize("script", [*GPU_SCRIPTS, "bulk_actor.py"])
def test_gpu_host_scripts_import_without_ray(script):
    proc = run_without_ray(REPO / "benchmarks" / script, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


def test_gpu_cifar_runs_tiny_on_cpu_without_ray(tmp_path, tiny_cifar):
    """benchmarks/gpu_cifar.py --tiny: the lab recipe (1 epoch) through the shared training loop."""
    proc = run_without_ray(REPO / "benchmarks" / "gpu_cifar.py", "--tiny", "--skip-throughput", "--recipes", "fp32:0",
                           "--data-dir", str(tiny_cifar), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_cifar.json").read_text())
    (recipe,) = result["lab_recipes"]
    assert "error" not in recipe, recipe
    assert recipe["train_images"] == 128 and recipe["epochs"] == 1 and 0 <= recipe["test_acc"] <= 1
    assert recipe["lab_line"].startswith("loss ")


def test_gpu_style_runs_tiny_on_cpu_without_ray(tmp_path):
    """benchmarks/gpu_style.py --tiny: every config and the comparison picture, in seconds."""
    from cvray.style.vgg import build_vgg_features

    torch.manual_seed(0)
    weights = tmp_path / "vgg16.pth"
    torch.save({k: v.half() for k, v in build_vgg_features("vgg16", "random").state_dict().items()}, weights)
    content = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 7), size=(40, 60), mode="bilinear")[0]
    Image.fromarray((content.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "content.png")
    Image.fromarray((torch.rand(48, 48, 3).numpy() * 255).astype("uint8")).save(tmp_path / "style.png")
    proc = run_without_ray(
        REPO / "benchmarks" / "gpu_style.py", "--tiny", "--device", "cpu", "--out", str(tmp_path / "out"),
        "--batch-sizes", "2", "--weights", str(weights),
        "--content", str(tmp_path / "content.png"), "--style", str(tmp_path / "style.png"), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    names = [run["name"] for run in report["runs"]]
    assert names == ["cvray_bf16_b2", "lab", "cvray_bf16_b1", "cvray_fp32_b2", "lab_frozen"]
    assert all(run["seconds_per_image"] > 0 for run in report["runs"])
    assert report["best_cvray"]["name"].startswith("cvray_bf16")
    picture_info = report["picture"]
    assert Image.open(picture_info["path"]).height == 3 * (32 + 18) + 2 * 4  # 3 captioned rows
    assert set(picture_info["settings"]) == {"lab", "balanced"}
    assert json.loads((tmp_path / "out" / "gpu_style.json").read_text()) == report
