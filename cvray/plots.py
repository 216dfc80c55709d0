"""Plots as PNG bytes: training curves (the lab's animator) and style-transfer loss curves.

matplotlib's object API on the Agg canvas (Figure + FigureCanvasAgg, no pyplot): importing this
module changes no global backend, so it is safe in Ray workers, threads and notebooks alike.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cvray import storage


def new_figure(width_in: float, height_in: float, dpi: int = 120) -> tuple[Figure, Axes]:
    """A one-axes figure on its own Agg canvas (no global state)."""
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def integer_epochs(ax: Axes) -> None:
    """Epoch axes show whole epochs only."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def figure_png(fig: Figure, ax: Axes, title: str = "") -> bytes:
    """Finish a one-axes figure (title, tight layout) and return it as PNG bytes."""
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def curves_png(history: Sequence[Mapping[str, Any]], title: str = "") -> bytes:
    """The lab's animator figure: train loss, train acc and test acc against epoch, as PNG bytes."""
    rows = sorted(history, key=lambda r: r["epoch"])
    epochs = [r["epoch"] for r in rows]
    fig, ax = new_figure(4.5, 3.2)
    ax.plot(epochs, [r["train_loss"] for r in rows], "-", label="train loss")
    ax.plot(epochs, [r["train_acc"] for r in rows], "m--", label="train acc")
    ax.plot(epochs, [r["test_acc"] for r in rows], "g-.", label="test acc")
    ax.set_xlabel("epoch")
    integer_epochs(ax)
    ax.set_xlim(1, max(max(epochs), 2))
    ax.set_ylim(0, max(1.0, max(r["train_loss"] for r in rows) * 1.05))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return figure_png(fig, ax, title)


def write_curves(path: str, history: Sequence[Mapping[str, Any]], title: str = "") -> None:
    storage.write_bytes_atomic(path, curves_png(history, title))


def loss_curves_png(losses: Mapping[str, np.ndarray], title: str = "") -> bytes:
    """PNG of per-iteration losses {name: (iterations,)} on a log scale, like the lab's animator."""
    fig, ax = new_figure(5, 3.2, dpi=100)
    for name, values in losses.items():
        values = np.asarray(values, dtype=np.float64)
        # log scale: zeros (the content loss at a content init) are left out, not drawn at -inf
        ax.plot(np.arange(1, len(values) + 1), np.where(values > 0, values, np.nan), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (weighted)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return figure_png(fig, ax, title)
