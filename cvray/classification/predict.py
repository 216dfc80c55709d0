"""Batch prediction of a trained run over an image folder, without Ray: the manifest row, the
decode stage (sizes follow the run's transform), the predicting actor (one model per actor), and
the results are cvray.classification.predict_report's. cvray.on_ray.predict runs the two
stages on Ray Data; everything here also runs (and is tested) where Ray is absent.

Which files to process, skip or fail, and the per-file manifest, are cvray.manifest's (the same
machinery as bulk stylisation, with PREDICT_MANIFEST's columns). torch is imported only where a
model runs, so the decode tasks (which import this module) start fast.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from cvray import folders, storage
from cvray.config import JsonConfig
from cvray.errors import ConfigError, CvrayError, DataError
from cvray.folders import Folder
from cvray.images import decode_image_at
from cvray.manifest import (
    ManifestKind,
    WorkItem,
    failure_reason,
    manifest_record,
    write_manifest_part,
)

log = logging.getLogger(__name__)

CIFAR_SIZE = 32
"""The "cifar" preset's input: every image squashed to 32 x 32 (the size CIFAR-10 is stored at)."""


# ------------------------------------------------------------------ the manifest row


class PredictRecord(TypedDict, total=False):
    """One manifest row of the predict job. Keys are PREDICT_SCHEMA's names (a test checks)."""

    relpath: str  # input path relative to the input folder, "/"-separated
    input: str  # input as the user names it (path or URI)
    status: str  # "done" or "failed"
    error: str | None  # one-line reason when failed
    width: int  # size the image was decoded at, before the run's batch transform
    height: int
    input_width: int  # upright input size (EXIF orientation applied)
    input_height: int
    input_bytes: int
    predicted: str | None  # class name of the highest probability
    probability: float | None  # its probability
    probabilities: list[float] | None  # softmax over the run's classes, in the model's order
    seconds: float  # model time of the file's batch / files in it
    batch_images: int  # files predicted together with it
    run_id: str  # the job run that decided this row
    node: str | None  # id of the Ray node whose worker decided it; None when decided while listing
    finished_at: datetime.datetime  # UTC


PREDICT_SCHEMA = pa.schema([
    ("relpath", pa.string()), ("input", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("input_width", pa.int32()), ("input_height", pa.int32()),
    ("input_bytes", pa.int64()),
    ("predicted", pa.string()), ("probability", pa.float32()), ("probabilities", pa.list_(pa.float32())),
    ("seconds", pa.float64()), ("batch_images", pa.int32()),
    ("run_id", pa.string()), ("node", pa.string()), ("finished_at", pa.timestamp("ms", tz="UTC")),
])
PREDICT_MANIFEST = ManifestKind("predict", PREDICT_SCHEMA, PredictRecord)
"""No file per input: a done row holds the prediction, and predictions.parquet is built from the rows."""


@dataclass(frozen=True)
class PredictConfig(JsonConfig):
    """Batch prediction of a trained run over an image folder on Ray Data (docs/predict.md)."""

    run: str = ""
    """Training run folder, or its model.pt (local path or URI)."""
    input: str = ""
    """Folder (local path or URI) searched recursively for images."""
    output: str = ""
    """Output folder; must not lie inside the input folder (nor contain it)."""
    num_actors: int | None = None
    """Predicting actors; None: one per GPU, else one per two CPUs (at least 1)."""
    batch_size: int = 64
    """Images one actor feeds the model at a time."""
    overwrite: bool = False
    """Redo every image, even those predicted by an earlier run."""
    use_gpu: bool | None = None
    """None: one GPU per actor when the cluster has GPUs, else CPU actors."""
    cpus_per_actor: float | None = None
    """CPU actors: torch threads per actor; None: a fair share of the cluster (the reservation
    is capped so the decode tasks always fit beside)."""


# ------------------------------------------------------------------ the run and its input size


@dataclass(frozen=True)
class DecodeSpec:
    """The size every image is decoded at, from the run's transform (plain data: decode tasks
    get it without importing torch).

    mode "exact": `size` x `size` whatever the aspect ("cifar": the model takes 32x32);
    mode "short_side": the shorter side becomes `size`, aspect kept ("crop": the run's decode size,
    as its test images were decoded; the batch transform then resizes to R x R and centre-crops to
    C; runs that recorded none: R = round(C * 256 / 224))."""

    mode: str
    size: int

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) to decode an upright width x height image at."""
        if self.mode == "exact":
            return self.size, self.size
        if width <= height:
            return max(1, round(height * self.size / width)), self.size
        return self.size, max(1, round(width * self.size / height))


def decode_spec(transform: dict[str, Any], decode_size: int | None = None) -> DecodeSpec:
    """The DecodeSpec of a run's transform (model.pt's "transform" and "decode_size"); ConfigError
    for an unknown preset or a bad crop size (what eval_transform refuses)."""
    from cvray.classification.transforms import CropEval, eval_transform

    batch_transform = eval_transform(**transform)
    if isinstance(batch_transform, CropEval):
        return DecodeSpec("short_side", int(decode_size or batch_transform.resize))
    if transform.get("preset") == "cifar":
        return DecodeSpec("exact", CIFAR_SIZE)
    raise ConfigError(f"no decode size known for the transform {transform}")  # a preset added later


@dataclass(frozen=True)
class RunModel:
    """What the driver knows of the run it predicts with (checked before any work starts)."""

    path: str
    """model.pt, a URI or an absolute local path (Ray workers may start in another folder)."""
    sha1: str
    """Content digest: one output folder never mixes two models' predictions."""
    classes: list[str]
    transform: dict[str, Any]
    arch: str
    spec: DecodeSpec


def model_file(run: str) -> str:
    """model.pt of a run folder, or the file itself; local paths made absolute."""
    run = str(run)
    path = run if storage.is_uri(run) else os.path.abspath(os.path.expanduser(run))
    return storage.join(path, "model.pt") if storage.is_dir(path) else path


def open_run(run: str) -> RunModel:
    """Load the run's model once (on the CPU) to check it and read what it expects. DataError for
    a missing run, a folder without model.pt, or a file that is not a cvray model."""
    from cvray.classification.runs import load_model

    path = model_file(run)
    if not storage.exists(path):
        where = "the folder has no model.pt" if path != str(run) and storage.is_dir(run) else "no such run"
        raise DataError(f"--run {run}: {where} (a finished cvray training run, or its model.pt)")
    if not path.endswith(".pt"):  # what load_model takes for a file
        raise DataError(f"--run {run}: not a cvray model file (a run folder, or a .pt file saved by a run)")
    data = storage.read_bytes(path)
    _, info = load_model(path, "cpu")
    classes = [str(c) for c in info.get("classes") or []]
    if not classes or len(set(classes)) != len(classes):
        raise DataError(f"{path} is not a cvray model file (no class names, or repeated ones)")
    return RunModel(path=path, sha1=hashlib.sha1(data).hexdigest(), classes=classes,
                    transform=dict(info["transform"]), arch=str(info["arch"]),
                    spec=decode_spec(info["transform"], info.get("decode_size")))


def check_run_config(config: PredictConfig, src: Folder, dst: Folder, model: RunModel, has_outputs: bool) -> None:
    """Refuse to mix predictions of another model or input into one output folder (unless
    --overwrite, or nothing was predicted yet); then record this run's in OUTPUT/_cvray/config.json."""
    path = folders.metadata_path(dst, "config.json")
    where = f"{src.fs.type_name}:{src.path}"
    current = {"job": "predict", "input": where, "model_sha1": model.sha1, "classes": model.classes,
               "transform": model.transform}
    if has_outputs and not config.overwrite and dst.fs.get_file_info(path).type == pafs.FileType.File:
        with dst.fs.open_input_stream(path) as f:
            earlier = json.loads(f.read().decode("utf-8"))
        changed = [f"{key} {earlier.get(key)} -> {value}" if key == "input" else key
                   for key, value in current.items() if earlier.get(key) != value]
        if changed:
            raise ConfigError(
                f"{dst.uri} holds predictions made with other settings ({', '.join(changed)}): "
                "rerun with --overwrite to redo them all, or choose another --output"
            )
    text = json.dumps({**current, "model": model.path, "predict_config": config.to_dict()}, indent=2)
    folders.write_file(dst, path, text.encode("utf-8"))


# ------------------------------------------------------------------ the two stages Ray Data runs

DECODED_SCHEMA = pa.schema([
    ("relpath", pa.string()), ("input", pa.string()), ("input_bytes", pa.int64()),
    ("input_width", pa.int32()), ("input_height", pa.int32()),
    ("height", pa.int32()), ("width", pa.int32()),
    ("pixels", pa.binary()),  # uint8 RGB, row-major (height, width, 3)
])
RESULT_SCHEMA = pa.schema([("relpath", pa.string()), ("status", pa.string()), ("error", pa.string())])


def decode_batch(batch: pa.Table, *, src: Folder, dst: Folder, spec: DecodeSpec, run_id: str,
                 node: str | None = None) -> pa.Table:
    """Ray Data task: read and decode every image of the batch at the run's size (Pillow LANCZOS,
    EXIF orientation, any mode, JPEG draft mode); a bad file becomes a failed manifest part here
    (recording `node`, this task's Ray node) and leaves the stream. No torch here."""
    rows = []
    for item in batch.to_pylist():
        try:
            with src.fs.open_input_stream(item["in_path"]) as f:
                data = f.read()
            img, (w0, h0) = decode_image_at(data, spec.size_for, name=item["relpath"])
            pixels = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001 - any bad file is a failed row, never a stopped job
            why = failure_reason(exc, item["relpath"])
            write_manifest_part(dst, manifest_record(_base(item), run_id, node=node, status="failed", error=why),
                                PREDICT_MANIFEST)
            continue
        rows.append({
            **{k: item[k] for k in ("relpath", "input", "input_bytes")},
            "input_width": w0, "input_height": h0, "height": pixels.shape[0], "width": pixels.shape[1],
            "pixels": pixels.tobytes(),
        })
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def predict_arrays(model, transform, arrays: list[np.ndarray], device) -> np.ndarray:
    """Class probabilities (B, classes) float32 of (h, w, 3) uint8 images, sizes may differ: the
    images moved to the device in one copy (RaggedImages), the run's transform of their views, the
    model in fp32, softmax."""
    import torch

    from cvray.classification.datasets import RaggedImages

    ragged = RaggedImages.from_arrays(arrays).to(device)
    with torch.inference_mode():
        x = transform(ragged.views(range(len(ragged))), None)
        return torch.softmax(model(x).float(), dim=1).cpu().numpy()


class PredictActor:
    """Ray Data callable class: the run's model and batch transform, loaded once per actor."""

    def __init__(self, *, model_path: str, classes: list[str], dst: Folder, run_id: str, batch_size: int,
                 threads: int | None, use_gpu: bool, node: str | None = None):
        import torch

        from cvray.classification.runs import load_model
        from cvray.classification.transforms import eval_transform

        if threads:
            torch.set_num_threads(threads)  # Ray's OMP_NUM_THREADS follows the fractional CPU share
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.dst, self.run_id, self.batch_size, self.classes = dst, run_id, batch_size, list(classes)
        self.node = node  # the Ray node this actor runs on, for its manifest rows
        self.model = self.transform = self.setup_error = None
        try:
            self.model, info = load_model(model_path, self.device)
            self.transform = eval_transform(**info["transform"])
            if [str(c) for c in info["classes"]] != self.classes:
                raise DataError(f"{model_path} changed while the job ran (other classes): rerun the job")
        except CvrayError as exc:
            # Raised from the first batch instead: an error in an actor's constructor makes Ray
            # restart it again and again, then end with an ActorDiedError hiding the reason.
            self.setup_error = exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.setup_error is not None:
            raise self.setup_error
        rows = sorted(batch.to_pylist(), key=lambda r: (r["height"], r["width"]))  # less padding
        results = []
        for start in range(0, len(rows), self.batch_size):
            results += self._predict(rows[start:start + self.batch_size])
        return pa.Table.from_pylist(results, schema=RESULT_SCHEMA)

    def _predict(self, rows: list[dict]) -> list[dict]:
        """Predict rows together; write each one's manifest part."""
        arrays = [np.frombuffer(r["pixels"], np.uint8).reshape(r["height"], r["width"], 3) for r in rows]
        start = time.perf_counter()
        try:
            probs = predict_arrays(self.model, self.transform, arrays, self.device)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: fail these rows, keep going
            return [self._finish(r, error=f"predicting failed: {failure_reason(exc)}") for r in rows]
        seconds = (time.perf_counter() - start) / len(rows)
        out = []
        for row, p in zip(rows, probs, strict=True):
            best = int(p.argmax())
            out.append(self._finish(row, predicted=self.classes[best], probability=float(p[best]),
                                    probabilities=p.tolist(), seconds=seconds, batch_images=len(rows)))
        return out

    def _finish(self, row: dict, *, error: str | None = None, **fields) -> dict:
        base = {**_base(row), "width": row["width"], "height": row["height"],
                "input_width": row["input_width"], "input_height": row["input_height"]}
        status = "failed" if error else "done"
        record = manifest_record(base, self.run_id, node=self.node, status=status, error=error, **fields)
        write_manifest_part(self.dst, record, PREDICT_MANIFEST)
        return {"relpath": row["relpath"], "status": status, "error": error}


def _base(item: WorkItem | dict) -> PredictRecord:
    return PredictRecord(**{k: item.get(k) for k in ("relpath", "input", "input_bytes")})
