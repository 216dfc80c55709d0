"""The results of batch prediction: predictions.parquet, and for a labelled input accuracy.json
and confusion.png, all made from the merged manifest (so a resumed run's table has every image
once). Plain Python + pyarrow + matplotlib; no Ray, no torch."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cvray import folders, plots
from cvray.classification.predict import PredictRecord, RunModel
from cvray.errors import DataError
from cvray.folders import Folder
from cvray.manifest import RunSummary

log = logging.getLogger(__name__)

PREDICTIONS_NAME = "predictions.parquet"
ACCURACY_NAME = "accuracy.json"
CONFUSION_NAME = "confusion.png"
CLASSES_KEY = b"cvray.classes"
"""predictions.parquet metadata: the run's class names (JSON list), in the model's output order."""




def folder_labels(relpaths: list[str], classes: list[str]) -> dict[str, str] | None:
    """{relpath: label} when every top-level sub-folder of the input is a class of the run (the
    train/<class>/... layout; deeper folders keep their top-level folder's label), else None.
    Files directly at the top of the input have no label."""
    tops = {rel.split("/", 1)[0] for rel in relpaths if "/" in rel}
    if not tops or not tops <= set(classes):
        return None
    return {rel: rel.split("/", 1)[0] for rel in relpaths if "/" in rel}


def predictions_table(
    records: dict[str, PredictRecord], listed: list[str], classes: list[str], labels: dict[str, str] | None
) -> pa.Table:
    """One row per listed file with a done row: relpath, input, [label], predicted, probability,
    then p_<class> per class (float32) in the model's order; the class list in the metadata."""
    rows = [records[rel] for rel in listed if rel in records and records[rel]["status"] == "done"]
    for row in rows:
        if len(row["probabilities"] or ()) != len(classes):
            raise DataError(f"the manifest row of {row['relpath']} has no probabilities for these "
                            f"{len(classes)} classes: rerun with --overwrite")
    probs = np.array([r["probabilities"] for r in rows], dtype=np.float32).reshape(len(rows), len(classes))
    columns: dict[str, pa.Array] = {
        "relpath": pa.array([r["relpath"] for r in rows], pa.string()),
        "input": pa.array([r["input"] for r in rows], pa.string()),
    }
    if labels is not None:
        columns["label"] = pa.array([labels.get(r["relpath"]) for r in rows], pa.string())
    columns["predicted"] = pa.array([r["predicted"] for r in rows], pa.string())
    columns["probability"] = pa.array([r["probability"] for r in rows], pa.float32())
    for i, name in enumerate(classes):
        columns[f"p_{name}"] = pa.array(probs[:, i], pa.float32())
    table = pa.table(columns)
    return table.replace_schema_metadata({CLASSES_KEY: json.dumps(classes).encode("utf-8")})


def accuracy_report(labels: list[str], predicted: list[str], classes: list[str]) -> dict[str, Any]:
    """Accuracy over labelled predictions, per class (images, correct, accuracy per true label),
    and the confusion matrix (rows: true label, columns: predicted) over the classes that occur
    as a label or a prediction, in the run's order."""
    seen = set(labels) | set(predicted)
    shown = [c for c in classes if c in seen]
    index = {c: i for i, c in enumerate(shown)}
    matrix = np.zeros((len(shown), len(shown)), dtype=np.int64)
    for true, guess in zip(labels, predicted, strict=True):
        matrix[index[true], index[guess]] += 1
    correct = int(np.trace(matrix))
    per_class = {}
    for c in shown:
        images = int(matrix[index[c]].sum())
        if images:
            hits = int(matrix[index[c], index[c]])
            per_class[c] = {"images": images, "correct": hits, "accuracy": hits / images}
    return {
        "accuracy": correct / len(labels) if labels else None, "images": len(labels), "correct": correct,
        "per_class": per_class, "confusion": {"classes": shown, "matrix": matrix.tolist()},
    }


def confusion_png(report: dict[str, Any], title: str = "") -> bytes:
    """A labelled confusion-matrix picture (counts in the cells up to 30 classes)."""

    classes = report["confusion"]["classes"]
    matrix = np.array(report["confusion"]["matrix"], dtype=np.int64).reshape(len(classes), len(classes))
    n = len(classes)
    side = min(14.0, 2.2 + 0.5 * n)
    fig, ax = plots.new_figure(side + 0.8, side)
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, int(matrix.max())))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="images")
    ax.set_xticks(range(n), labels=classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (folder)")
    if n <= 30:
        top = max(1, int(matrix.max()))
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > top / 2 else "black")
    accuracy = report["accuracy"]
    heading = f"accuracy {accuracy:.3f} on {report['images']} images" if accuracy is not None else "no images"
    return plots.figure_png(fig, ax, f"{title}\n{heading}" if title else heading)


@dataclass
class PredictResult:
    """What one run of the predict job did and wrote."""

    summary: RunSummary
    predictions: str
    """predictions.parquet, as the user names it."""
    images: int
    """Rows of predictions.parquet (every image of the input with a prediction, this run's or earlier)."""
    accuracy: dict[str, Any] | None
    """accuracy.json's content when the input is labelled (train/<class> layout), else None."""
    accuracy_path: str | None
    confusion_path: str | None

    def lines(self) -> list[str]:
        """The job's closing lines: the results, the summary, up to three failure reasons."""
        out = [f"predictions: {self.images} images -> {self.predictions}"]
        if self.accuracy is not None and self.accuracy["accuracy"] is not None:
            out.append(f"accuracy {self.accuracy['accuracy']:.4f} on {self.accuracy['images']} labelled images "
                       f"({self.accuracy_path}, {self.confusion_path})")
        out.append(self.summary.line())
        out += [f"  failed: {error}" for error in self.summary.errors]
        return out


def write_results(
    dst: Folder, records: dict[str, PredictRecord], listed: list[str], model: RunModel, summary: RunSummary
) -> PredictResult:
    """predictions.parquet from the merged manifest (every listed file with a done row, once),
    and when the input is labelled accuracy.json and confusion.png; stale ones of an earlier,
    labelled run are removed when the input is not labelled any more."""
    labels = folder_labels(listed, model.classes)
    table = predictions_table(records, listed, model.classes, labels)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    folders.write_file(dst, dst.path_of(PREDICTIONS_NAME), sink.getvalue())
    accuracy = accuracy_path = confusion_path = None
    if labels is not None:
        pairs = [(labels[rel], guess) for rel, guess in zip(table.column("relpath").to_pylist(),
                                                            table.column("predicted").to_pylist(), strict=True)
                 if rel in labels]
        accuracy = accuracy_report([t for t, _ in pairs], [g for _, g in pairs], model.classes)
        failed = sum(1 for rel in listed if rel in labels and records.get(rel, {}).get("status") != "done")
        accuracy.update(failed=failed, classes=model.classes, model=model.path, model_sha1=model.sha1)
        folders.write_file(dst, dst.path_of(ACCURACY_NAME), (json.dumps(accuracy, indent=2) + "\n").encode())
        picture = confusion_png(accuracy, f"{model.arch}, {len(model.classes)} classes")
        folders.write_file(dst, dst.path_of(CONFUSION_NAME), picture)
        accuracy_path, confusion_path = dst.uri_of(ACCURACY_NAME), dst.uri_of(CONFUSION_NAME)
    else:
        for name in (ACCURACY_NAME, CONFUSION_NAME):
            path = dst.path_of(name)
            if dst.fs.get_file_info(path).type == pafs.FileType.File:
                dst.fs.delete_file(path)
                log.info(f"removed {dst.uri_of(name)} of an earlier run: the input is not labelled any more")
    return PredictResult(summary=summary, predictions=dst.uri_of(PREDICTIONS_NAME), images=table.num_rows,
                         accuracy=accuracy, accuracy_path=accuracy_path, confusion_path=confusion_path)
