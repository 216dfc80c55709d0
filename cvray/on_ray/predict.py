"""Batch prediction of a trained run over an image folder on Ray Data: the pipeline's wiring (the
stages, the manifest row and the results are plain Python in cvray.classification.predict).

Pipeline: the driver checks the run (model.pt loads, its transform is known), lists the input and
drops what earlier runs finished (cvray.manifest, the bulk job's machinery) -> CPU tasks read the
bytes and decode each image at the size the run's transform expects -> an actor pool (the model
and its batch transform loaded once per actor, a GPU each when the cluster has them) predicts
B images at a time and writes each file's manifest part -> the driver merges the parts into
OUTPUT/_cvray/manifest.parquet and writes predictions.parquet (and, for a labelled input,
accuracy.json and confusion.png) from the merged rows.
"""

from __future__ import annotations

import logging
import math
import uuid

from cvray import folders
from cvray.classification.predict import (
    PREDICT_MANIFEST,
    PredictActor,
    PredictConfig,
    RunModel,
    check_run_config,
    decode_batch,
    open_run,
)
from cvray.classification.predict_report import PredictResult, write_results
from cvray.errors import ConfigError
from cvray.folders import Folder
from cvray.manifest import plan_work, read_manifest_state
from cvray.on_ray.connect import connect
from cvray.on_ray.folder_job import describe, run_plan, run_stages
from cvray.on_ray.placement import plan_actors

log = logging.getLogger(__name__)

IMAGES_PER_DECODE_TASK = 16
"""Images one decode task reads (fewer for small folders, so every actor gets work early)."""


def run_predict(config: PredictConfig, *, address: str | None = None) -> PredictResult:
    """Predict every image under config.input with the run config.run into config.output; see
    docs/predict.md. Bad files are failed manifest rows, never exceptions; user errors (missing
    run or input, output inside the input, --gpu without GPUs) are CvrayErrors."""
    if config.batch_size < 1 or (config.num_actors is not None and config.num_actors < 1):
        raise ConfigError("--batch-size and --num-actors must be positive")
    src, dst = folders.open_folder(config.input), folders.open_folder(config.output)
    folders.check_not_nested(src, dst)
    model = open_run(config.run)
    run_id = uuid.uuid4().hex[:12]
    plan = plan_work(src, dst, run_id, overwrite=config.overwrite, kind=PREDICT_MANIFEST)
    has_outputs = any(r["status"] == "done" for r in plan.records.values())
    check_run_config(config, src, dst, model, has_outputs)
    summary = run_plan(plan, dst, run_id, lambda: _execute(config, model, plan.todo, src, dst, run_id, address))
    records, _ = read_manifest_state(dst, PREDICT_MANIFEST)
    return write_results(dst, records, plan.listed, model, summary)


def _execute(config: PredictConfig, model: RunModel, todo: list, src: Folder, dst: Folder, run_id: str,
             address: str | None) -> None:
    placement = plan_actors(connect(address), config.num_actors, config.use_gpu, config.cpus_per_actor)
    log.info(f"predicting {len(todo)} images with {placement.count} actor(s) on {describe(placement)} each "
             f"({model.arch}, {len(model.classes)} classes)")
    run_stages(
        todo, src, dst, placement,
        decode=decode_batch, decode_kwargs={"src": src, "dst": dst, "spec": model.spec, "run_id": run_id},
        actor=PredictActor, actor_kwargs={"model_path": model.path, "classes": model.classes, "dst": dst,
                                          "run_id": run_id, "batch_size": config.batch_size},
        rows_per_call=max(1, min(2 * config.batch_size, math.ceil(len(todo) / (2 * placement.count)))),
        items_per_decode_task=IMAGES_PER_DECODE_TASK,
        kind=PREDICT_MANIFEST, run_id=run_id,
    )
