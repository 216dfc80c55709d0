"""Runs side by side: one table and one picture of several runs' curves (the lab's comparison of
fine-tuning against training from scratch at a glance). Plain Python + matplotlib; no Ray."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from cvray import plots, storage
from cvray.classification import runs
from cvray.classification.metrics import METRIC_COLUMNS

STYLES = ("-", "--", "-.", ":")


def comparison_png(histories: Mapping[str, list], title: str = "") -> bytes:
    """Train loss and test accuracy per epoch, one colour per run."""
    fig, ax = plots.new_figure(5.5, 3.4)
    for i, (label, rows) in enumerate(histories.items()):
        rows = sorted(rows, key=lambda r: r["epoch"])
        epochs = [r["epoch"] for r in rows]
        color = f"C{i}"
        ax.plot(epochs, [r["train_loss"] for r in rows], STYLES[0], color=color, label=f"{label}: train loss")
        ax.plot(epochs, [r["test_acc"] for r in rows], STYLES[2], color=color, label=f"{label}: test acc")
    ax.set_xlabel("epoch")
    plots.integer_epochs(ax)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    return plots.figure_png(fig, ax, title)


def write_comparison(directory: str, run_dirs: Mapping[str, str]) -> list[dict]:
    """compare.csv, compare.parquet (every run's epoch rows, labelled) and compare.png in
    `directory`; returns one summary row per run (label, epochs, final numbers, run folder)."""
    histories = {label: runs.read_metrics(path) for label, path in run_dirs.items()}
    rows = [{"run": label, **r} for label, history in histories.items() for r in history]
    columns = ("run", *METRIC_COLUMNS)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text_atomic(storage.join(directory, "compare.csv"), text.getvalue())
    buffer = io.BytesIO()
    pq.write_table(pa.table({c: [r[c] for r in rows] for c in columns}), buffer)
    storage.write_bytes_atomic(storage.join(directory, "compare.parquet"), buffer.getvalue())
    title = " vs ".join(histories)
    storage.write_bytes_atomic(storage.join(directory, "compare.png"), comparison_png(histories, title))
    summary = []
    for label, history in histories.items():
        last = max(history, key=lambda r: r["epoch"])
        summary.append({"run": label, "epochs": last["epoch"], "train_loss": last["train_loss"],
                        "train_acc": last["train_acc"], "test_acc": last["test_acc"], "run_dir": run_dirs[label]})
    return summary


def table_lines(summary: list[dict]) -> list[str]:
    """The console table of write_comparison's summary."""
    width = max(len(s["run"]) for s in summary)
    lines = [f"{'run':<{width}}  epochs  train loss  train acc  test acc"]
    for s in summary:
        lines.append(f"{s['run']:<{width}}  {s['epochs']:>6}  {s['train_loss']:>10.3f}  {s['train_acc']:>9.3f}  "
                     f"{s['test_acc']:>8.3f}")
    return lines
