"""Plots are PNG bytes made without touching matplotlib's global backend (safe in Ray workers)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cvray.plots import curves_png, loss_curves_png

REPO = Path(__file__).resolve().parents[1]


def test_curves_and_loss_curves_are_pngs():
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 * e, "test_acc": 0.25 * e} for e in (1, 2, 3)]
    assert Image.open(io.BytesIO(curves_png(history, "run"))).size[0] > 300
    losses = {"content": np.array([0.0, 1.0, 0.5]), "style": np.array([10.0, 3.0, 1.0])}
    assert Image.open(io.BytesIO(loss_curves_png(losses, "x"))).format == "PNG"


def test_importing_and_plotting_keep_the_callers_backend():
    code = (
        "import matplotlib; before = matplotlib.get_backend()\n"
        "import cvray.plots, cvray.grids, cvray.classification.runs\n"
        "cvray.plots.curves_png([{'epoch': 1, 'train_loss': 1.0, 'train_acc': 0.5, 'test_acc': 0.4}])\n"
        "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
        "import sys; assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
