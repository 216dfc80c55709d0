"""A sweep's outputs, from its trials' rows: the table (CSV + Parquet), the validation curves
picture, the console table and the best trial as a command. Plain Python (no Ray): the Ray Tune
glue (cvray.on_ray.sweeps) builds the rows."""

from __future__ import annotations

import io
import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import pyarrow as pa
import pyarrow.parquet as pq

from cvray import plots, storage

TABLE_NAME = "trials"
CURVES_NAME = "val_curves.png"
STATUSES = ("finished", "early-stopped", "failed", "not run")


class TrialRow(TypedDict):
    """One trial of a training sweep (the swept values come first in the table, one column each)."""

    trial: str
    status: str  # one of STATUSES
    error: str  # the failure's one line; "" otherwise
    epochs: int  # epochs run
    final_val_acc: float
    best_val_acc: float
    final_test_acc: float  # test accuracy: reported, never used to select
    test_acc_at_best_val: float
    seconds: float  # the epochs' wall time
    run_dir: str


def table_columns(swept: Sequence[str]) -> list[str]:
    return [*swept, *TrialRow.__annotations__]


def write_table(directory: str, rows: Sequence[Mapping[str, Any]], swept: Sequence[str],
                columns: Sequence[str] | None = None) -> None:
    """trials.csv and trials.parquet in the sweep folder (tuples of values as comma-joined text);
    columns: a training sweep's (table_columns) unless given."""
    columns = list(columns or table_columns(swept))
    cells = [{c: _cell(row.get(c)) for c in columns} for row in rows]
    text = io.StringIO()
    text.write(",".join(columns) + "\n")
    for row in cells:
        text.write(",".join(_csv(row[c]) for c in columns) + "\n")
    storage.write_text_atomic(storage.join(directory, f"{TABLE_NAME}.csv"), text.getvalue())
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(cells), buffer)
    storage.write_bytes_atomic(storage.join(directory, f"{TABLE_NAME}.parquet"), buffer.getvalue())


def _cell(value):
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return value


def _csv(value) -> str:
    text = "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))
    return f'"{text}"' if ("," in text or '"' in text) else text


def best_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The trial with the highest best validation accuracy among those that ran (ties: fewer epochs
    would be cheaper, but the first in the table wins: deterministic)."""
    ran = [r for r in rows if r["status"] in ("finished", "early-stopped") and _finite(r["best_val_acc"])]
    return max(ran, key=lambda r: r["best_val_acc"]) if ran else None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def curves_png(histories: Mapping[str, Sequence[Mapping[str, Any]]], labels: Mapping[str, str],
               best: str | None, title: str = "") -> bytes:
    """Every trial's validation accuracy per epoch; the best trial drawn thick and named."""
    fig, ax = plots.new_figure(7.0, 4.2)
    for trial, rows in histories.items():
        rows = sorted(rows, key=lambda r: r["epoch"])
        if not rows:
            continue
        epochs, acc = [r["epoch"] for r in rows], [r["val_acc"] for r in rows]
        if trial == best:
            ax.plot(epochs, acc, "-o", color="crimson", linewidth=2.5, zorder=3, label=f"best: {labels[trial]}")
        else:
            ax.plot(epochs, acc, "-o", color="gray", alpha=0.6, linewidth=1, markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    plots.integer_epochs(ax)
    ax.grid(True, alpha=0.3)
    if best is not None:
        ax.legend(loc="best", fontsize=8)
    return plots.figure_png(fig, ax, title)


def swept_order(row: Mapping[str, Any], swept: Sequence[str]) -> tuple:
    """Sort key of a trial row: by its swept values, numbers before text."""
    return tuple((0, row[f]) if isinstance(row[f], (int, float)) else (1, str(row[f])) for f in swept)


def fixed_width(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [head, *body]]
    return "\n".join(lines)


def console_table(rows: Sequence[Mapping[str, Any]], swept: Sequence[str]) -> str:
    """A fixed-width table: swept values, status, epochs, best val acc, final test acc."""
    head = [*(s.replace("_", "-") for s in swept), "status", "epochs", "best val acc", "test acc", "seconds"]
    body = [[*(_short(r.get(s)) for s in swept), r["status"], str(r["epochs"]), _acc(r["best_val_acc"]),
             _acc(r["final_test_acc"]), f"{r['seconds']:.0f}"] for r in rows]
    return fixed_width(head, body)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def _acc(value) -> str:
    return f"{value:.3f}" if _finite(value) else "-"


def flag_value(value) -> str:
    """A swept value as its job flag takes it (repr keeps floats exact)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def best_command(script: str, fixed_argv: Sequence[str], values: Mapping[str, Any], name: str | None = None) -> str:
    """The command that runs a trial again on its own: the sweep's fixed flags, the trial's values
    as flags, and a new --name (when given)."""
    argv = ["python", script, *fixed_argv]
    for field, value in values.items():
        argv += [f"--{field.replace('_', '-')}", flag_value(value)]
    if name is not None:
        argv += ["--name", name]
    return shlex.join(str(a) for a in argv)
