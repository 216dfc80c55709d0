"""What the user reads on the console: the lab's lines, and the logging setup that carries them.

The library logs (logger names under "cvray"); jobs/ print their final lines themselves. A job
calls `configure_logging` once, and so does every Ray worker that logs (the training worker):
INFO lines go to stdout as bare messages, warnings and errors to stderr. Ray forwards a worker's
stdout to the driver's console, from any node, so a line logged once on a worker shows once.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cvray.classification.metrics import EpochMetrics, ProgressSums, RunSummary

LOGGER_NAME = "cvray"


class _ConsoleHandler(logging.Handler):
    """Bare messages; INFO to stdout, WARNING and above to stderr, each looked up when a line is
    written (so a redirected or captured sys.stdout is honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> logging.Logger:
    """Route the "cvray" loggers to the console (idempotent: one handler, however often called).

    propagate is off, so a root handler (Ray's, a notebook's) never prints a line a second time.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_ConsoleHandler())
    logger.setLevel(level)
    logger.propagate = False
    return logger


def epoch_line(row: EpochMetrics, epochs: int) -> str:
    """One progress line per epoch, e.g.
    `epoch 3/10: loss 0.658, train acc 0.770, test acc 0.727, 33044.8 examples/sec, 1.6 s`
    (with `val acc ...` before the test accuracy when a validation share is held out)."""
    val = row.get("val_acc")
    val_text = f"val acc {val:.3f}, " if val is not None else ""  # None: no validation split
    return (
        f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.3f}, train acc {row['train_acc']:.3f}, "
        f"{val_text}test acc {row['test_acc']:.3f}, {row['examples_per_sec']:.1f} examples/sec, "
        f"{row['epoch_seconds']:.1f} s"
    )


def progress_line(sums: ProgressSums, epoch: int, epochs: int, world_size: int = 1) -> str:
    """A line within a long epoch from one worker's running sums (of `world_size` alike), e.g.
    `epoch 1/10: 26% (12928/50000 images), loss 1.930, 47.1 examples/sec, 13.2 min left`."""
    done, total, seconds = sums["examples"], sums["total"], sums["seconds"]
    rate = done / seconds if seconds > 0 else 0.0
    left_min = (total - done) / rate / 60 if rate > 0 else float("nan")
    return (
        f"epoch {epoch}/{epochs}: {100 * done / total:.0f}% "
        f"({int(done) * world_size}/{int(total) * world_size} images), "
        f"loss {sums['loss_sum'] / max(done, 1):.3f}, {rate * world_size:.1f} examples/sec, {left_min:.1f} min left"
    )


def lab_lines(summary: RunSummary | Mapping, devices: Sequence[str]) -> str:
    """The lab's two closing lines, e.g.
    `loss 0.178, train acc 0.938, test acc 0.844` / `5647.3 examples/sec on [cuda:0, cuda:1]`."""
    return (
        f"loss {summary['train_loss']:.3f}, train acc {summary['train_acc']:.3f}, "
        f"test acc {summary['test_acc']:.3f}\n"
        f"{summary['examples_per_sec']:.1f} examples/sec on [{', '.join(devices)}]"
    )
