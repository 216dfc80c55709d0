"""Console lines and the logging that carries the library's lines to the user."""

from __future__ import annotations

import logging
from pathlib import Path

from cvray.console import configure_logging, epoch_line, lab_lines, progress_line

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_progress_line_scales_one_worker_to_the_run():
    sums = {"loss_sum": 250.0, "correct": 30.0, "examples": 100.0, "total": 400.0, "seconds": 10.0}
    line = progress_line(sums, epoch=2, epochs=10, world_size=2)
    assert line == "epoch 2/10: 25% (200/800 images), loss 2.500, 20.0 examples/sec, 0.5 min left"


def test_epoch_and_lab_lines_read_like_the_lab():
    row = {"epoch": 3, "train_loss": 0.6584, "train_acc": 0.77, "test_acc": 0.7271, "examples_per_sec": 33044.84,
           "epoch_seconds": 1.62}
    assert epoch_line(row, 10) == (
        "epoch 3/10: loss 0.658, train acc 0.770, test acc 0.727, 33044.8 examples/sec, 1.6 s"
    )
    summary = {"train_loss": 0.178, "train_acc": 0.938, "test_acc": 0.844, "examples_per_sec": 5647.3}
    assert lab_lines(summary, ["cuda:0", "cuda:1"]) == (
        "loss 0.178, train acc 0.938, test acc 0.844\n5647.3 examples/sec on [cuda:0, cuda:1]"
    )


def test_library_lines_go_to_stdout_warnings_to_stderr_once(capsys):
    configure_logging()
    configure_logging()  # idempotent: still one handler, so one line per message
    log = logging.getLogger("cvray.some.module")
    log.info("resuming run x")
    log.warning("careful")
    log.debug("hidden")
    out, err = capsys.readouterr()
    assert out == "resuming run x\n" and err == "careful\n"
