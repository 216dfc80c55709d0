"""Plots and console lines for training runs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cvray import storage  # noqa: E402


def curves_png(history: Sequence[dict[str, Any]], title: str = "") -> bytes:
    """The lab's animator figure: train loss, train acc and test acc against epoch, as PNG bytes."""
    rows = sorted(history, key=lambda r: r["epoch"])
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    ax.plot(epochs, [r["train_loss"] for r in rows], "-", label="train loss")
    ax.plot(epochs, [r["train_acc"] for r in rows], "m--", label="train acc")
    ax.plot(epochs, [r["test_acc"] for r in rows], "g-.", label="test acc")
    ax.set_xlabel("epoch")
    ax.set_xlim(1, max(max(epochs), 2))
    ax.set_ylim(0, max(1.0, max(r["train_loss"] for r in rows) * 1.05))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return figure_png(fig, ax, title)


def figure_png(fig, ax, title: str = "") -> bytes:
    """Finish a one-axes figure (title, tight layout) and return it as PNG bytes; closes it."""
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_curves(path: str, history: Sequence[dict[str, Any]], title: str = "") -> None:
    storage.write_bytes_atomic(path, curves_png(history, title))


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """One progress line per epoch, e.g. `epoch 3/10: loss 0.658, train acc 0.770, test acc 0.727, 33044.8 examples/sec, 1.6 s`."""
    return (
        f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.3f}, train acc {row['train_acc']:.3f}, "
        f"test acc {row['test_acc']:.3f}, {row['examples_per_sec']:.1f} examples/sec, {row['epoch_seconds']:.1f} s"
    )


def progress_line(sums: dict[str, float], epoch: int, epochs: int, world_size: int = 1) -> str:
    """A line within a long epoch from train_one_epoch's running sums of one worker (of
    `world_size` alike), e.g. `epoch 1/10: 26% (12928/50000 images), loss 1.930, 47.1 examples/sec, 13.2 min left`."""
    done, total, seconds = sums["examples"], sums["total"], sums["seconds"]
    rate = done / seconds if seconds > 0 else 0.0
    left_min = (total - done) / rate / 60 if rate > 0 else float("nan")
    return (
        f"epoch {epoch}/{epochs}: {100 * done / total:.0f}% ({int(done) * world_size}/{int(total) * world_size} images), "
        f"loss {sums['loss_sum'] / max(done, 1):.3f}, {rate * world_size:.1f} examples/sec, {left_min:.1f} min left"
    )


def lab_lines(summary: dict[str, Any], devices: Sequence[str]) -> str:
    """The lab's two closing lines, e.g.
    `loss 0.178, train acc 0.938, test acc 0.844` / `5647.3 examples/sec on [cuda:0, cuda:1]`."""
    return (
        f"loss {summary['train_loss']:.3f}, train acc {summary['train_acc']:.3f}, "
        f"test acc {summary['test_acc']:.3f}\n"
        f"{summary['examples_per_sec']:.1f} examples/sec on [{', '.join(devices)}]"
    )
