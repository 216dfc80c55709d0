"""jobs/stylize.py end to end on tiny images with a random VGG-16, and its one-line errors."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import stylize
import torch
from PIL import Image

import _common
import _style_args
from cvray.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
FAST = ["--arch", "vgg16", "--weights", "random", "--shape", "32x48", "--no-gpu"]


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    content = tmp_path / "content.png"
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(content)
    style = tmp_path / "style.jpg"
    Image.fromarray(rng.integers(0, 255, (50, 50, 3), dtype=np.uint8)).save(style)
    return str(content), str(style)


def run_job(argv, capsys):
    code = _common.run(stylize.main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_stylize_writes_image_losses_curves_strip_and_steps(tmp_path, images, capsys):
    content, style = images
    output = tmp_path / "out" / "result.jpg"
    code, out, err = run_job(["--content", content, "--style", style, "--output", str(output),
                              "--iterations", "4", "--save-every", "2", *FAST], capsys)
    assert code == 0, err
    folder = tmp_path / "out"
    assert sorted(p.name for p in folder.iterdir()) == [
        "result.jpg", "result_curves.png", "result_losses.csv", "result_run.json",
        "result_steps", "result_strip.png"]
    assert Image.open(output).size == (48, 32)
    assert sorted(p.name for p in (folder / "result_steps").iterdir()) == [
        "result_0002.png", "result_0004.png"]
    with open(folder / "result_losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    for r in rows:
        parts = float(r["content"]) + float(r["style"]) + float(r["tv"])
        assert float(r["total"]) == pytest.approx(parts, rel=1e-5)
    assert float(rows[0]["content"]) == 0.0  # starts from the content image
    run = json.loads((folder / "result_run.json").read_text())
    assert run["config"]["arch"] == "vgg16" and run["config"]["shape"] == [32, 48]
    assert run["config"]["iterations"] == 4 and run["device"] == "cpu"
    assert run["final_losses"]["total"] == pytest.approx(float(rows[-1]["total"]))
    strip = Image.open(folder / "result_strip.png")
    assert strip.height == 32 and strip.width > 3 * 32  # content | style | result
    assert Image.open(folder / "result_curves.png").format == "PNG"
    assert "sec/image on cpu" in out and "content loss" in out


def test_presets_and_flags_make_the_config():
    parser = _common.make_parser("t")
    _style_args.add_style_args(parser)
    lab = _style_args.style_config_from_args(parser.parse_args(["--style", "s.png"]))
    assert (lab.lr, lab.style_weight, lab.tv_weight, lab.iterations) == (0.3, 1e4, 10.0, 500)
    assert lab.size == 450 and lab.shape is None and lab.preset == "lab"
    args = parser.parse_args(["--style", "a.png", "--style", "b.png", "--style-blend", "1,3",
                              "--preset", "balanced", "--style-weight", "7", "--shape", "300x450",
                              "--style-layers", "relu1_1,relu2_1", "--original-colors",
                              "--precision", "fp32", "--init", "noise", "--seed", "3"])
    config = _style_args.style_config_from_args(args)
    assert config.preset == "balanced" and config.normalized_losses  # from the preset
    assert config.style_weight == 7.0 and config.shape == (300, 450)  # from the flags
    assert config.style_layers == ("relu1_1", "relu2_1") and config.style_blend == (1.0, 3.0)
    assert config.original_colors and config.precision == "fp32" and config.init == "noise"
    sized = _style_args.style_config_from_args(parser.parse_args(["--style", "s", "--size", "64"]))
    assert sized.size == 64 and sized.shape is None
    with pytest.raises(ConfigError, match="relu4_4.*valid"):  # VGG-16 has no relu4_4
        _style_args.style_config_from_args(
            parser.parse_args(["--style", "s", "--arch", "vgg16", "--content-layers", "relu4_4"]))
    assert _style_args.resolve_device(argparse.Namespace(gpu=False)) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_flag_without_cuda_is_a_one_line_error(images, tmp_path, capsys):
    content, style = images
    code, _, err = run_job(["--content", content, "--style", style, "--output",
                            str(tmp_path / "r.png"), "--gpu", "--weights", "random"], capsys)
    assert code == 2
    assert err.strip() == "error: --gpu asked but no CUDA device is visible"


def test_bad_inputs_are_one_line_errors_with_exit_2(tmp_path, images, capsys):
    content, style = images
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    vgg16_file = tmp_path / "vgg16.pth"
    torch.save({"0.weight": torch.zeros(64, 3, 3, 3)}, vgg16_file)
    out = str(tmp_path / "r.png")
    cases = [
        (["--content", str(tmp_path / "nope.png"), "--style", style, "--output", out], "not found"),
        (["--content", content, "--style", str(corrupt), "--output", out], "not a readable image"),
        (["--content", content, "--style", style, "--output", str(tmp_path / "r")], "image file path"),
        (["--content", content, "--style", style, "--output", out, "--style-layers", "relu9_9"],
         "unknown style layer relu9_9; valid: conv1_1"),
        (["--content", content, "--style", style, "--output", out, "--weights",
          str(tmp_path / "missing.pth")], "not found"),
        (["--content", content, "--style", style, "--output", out, "--weights", str(vgg16_file)],
         "do not fit vgg19"),
        (["--content", content, "--style", style, "--output", out, "--style-blend", "1,2"],
         "2 weights for 1 style images"),
        (["--content", content, "--style", style, "--output", content], "content image itself"),
    ]
    for argv, message in cases:
        code, _, err = run_job([*argv, "--iterations", "1", "--no-gpu"], capsys)
        assert code == 2, argv
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not Path(out).exists()


def test_bad_flags_exit_2_with_one_line(images, tmp_path, capsys):
    content, style = images
    base = ["--content", content, "--style", style, "--output", str(tmp_path / "r.png")]
    for flags, message in [(["--preset", "wild"], "invalid choice"),
                           (["--shape", "30x40", "--size", "40"], "not allowed with"),
                           (["--content-weight", "-1"], "must be zero or more")]:
        with pytest.raises(SystemExit) as info:
            stylize.main([*base, *flags])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # the real command line, once
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "stylize.py"), *base, "--shape", "300by450"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--shape must be HxW like 300x450" in proc.stderr and proc.stderr.count("\n") == 1
