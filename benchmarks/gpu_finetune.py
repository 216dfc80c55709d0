"""Fine-tuning on one GPU, plain PyTorch (no Ray on the device machine): what `jobs/finetune.py`
does on one GPU worker, and the predict job's decode + forward loop, in images/sec.

1. A labelled folder of real-size JPEGs (quality 90, two classes, long sides 300-500 px and, for a
   fifth, 800-1600 px; benchmarks/finetune_input.py builds it, not timed) from the photos in
   .devdata/images if present, else ../shared/data/images.
2. Fine-tuning at 224 px: torchvision resnet18 (random init: FinetuneRecipe's scratch baseline,
   the same network and cost as from ImageNet weights), FinetuneRecipe's SGD and summed loss,
   batch 128, through cvray.classification.worker's WorkerRun (the loop `fit` drives, here with a
   time check between epochs): load_image_folder once, then epochs of RaggedImages views +
   CropTrain (per-image crop and resize) + forward/backward/step on the device, bf16 autocast + channels_last with
   --precision bf16. The FIRST epoch (decode, model set-up and cuDNN warm-up included) and the
   steady state (epochs 2.., training only) are reported apart. Also, for the diagnosis, the
   input pipeline alone (views + CropTrain, synchronised) and the training step alone (one fixed
   float batch). Target: >= 3,000 img/s steady on one H100-class GPU (the lab: 968 on two).
3. Prediction: a run folder (runs.save_model of the fine-tuned model), then the predict job's two
   stages without Ray: predict.decode_batch over the folder (16 files per call, as the Ray job's
   decode tasks, on a thread pool) and PredictActor over the decoded rows (128 rows per call,
   batches of 64, manifest part per file), plus predict_arrays alone (no manifest writes).

    python benchmarks/gpu_finetune.py --out DIR [--images 2000] [--epochs 8] [--precision bf16[,fp32]] \\
        [--max-seconds 180] [--tiny]

--tiny runs everything on a few dozen small images at crop 64 (a CPU check, well under a minute).
--max-seconds skips the parts that would not fit (recorded under "skipped"). Prints ONE JSON
object and writes it to DIR/gpu_finetune.json (rewritten after every part).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

import _bootstrap  # noqa: F401 - first: puts the repository root on sys.path
from benchmarks.finetune_input import default_data_dir, write_photo_folder
from cvray import folders
from cvray.classification import models, runs
from cvray.classification.config import FinetuneConfig
from cvray.classification.datasets import ImageClassData, InMemorySource
from cvray.classification.engine import train_one_epoch
from cvray.classification.finetune import FinetuneRecipe, load_image_folder
from cvray.classification.predict import PREDICT_MANIFEST, PredictActor, decode_batch, open_run, predict_arrays
from cvray.classification.worker import WorkerRun
from cvray.manifest import plan_work

TARGET_STEADY = 3000.0
"""img/s, steady state on one H100-class GPU."""
LAB_IMAGES_PER_SEC = 968.0
"""The lab's fine-tuning throughput, on two GPUs."""
FILES_PER_DECODE_CALL = 16  # cvray.on_ray.predict.IMAGES_PER_DECODE_TASK (that module imports Ray)
ROWS_PER_ACTOR_CALL = 128  # what cvray.on_ray.predict passes per actor call at batch 64, big folders
PREDICT_BATCH = 64  # PredictConfig's default


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def finetune(data: ImageClassData, config: FinetuneConfig, device: torch.device, decode_seconds: float,
             deadline: float) -> dict:
    """Epochs of the recipe until config.epochs or the deadline; first epoch and steady state apart."""
    recipe = FinetuneRecipe()
    start = time.perf_counter()
    run = WorkerRun(recipe, config, data, device)
    sync(device)
    setup_seconds = time.perf_counter() - start
    rows = []
    while run.epoch < config.epochs and (run.epoch < 2 or time.perf_counter() < deadline):
        rows.append(run.run_epoch())
        log(f"  {config.precision} epoch {run.epoch}: {rows[-1]['examples_per_sec']:.1f} img/s "
            f"({rows[-1]['train_seconds']:.2f} s train, {rows[-1]['epoch_seconds']:.2f} s with eval)")
    n = rows[0]["train_examples"]
    first_seconds = decode_seconds + setup_seconds + rows[0]["train_seconds"]
    steady = [r["examples_per_sec"] for r in rows[1:]]
    out = {
        "precision": config.precision, "batch_size": config.batch_size, "crop": config.crop_size,
        "decode_size": config.decode_size, "train_images": n, "test_images": len(data.test_labels),
        "epochs": len(rows),
        "first_epoch": {
            "images_per_sec": round(n / first_seconds, 1), "seconds": round(first_seconds, 2),
            "decode_seconds": round(decode_seconds, 2), "setup_seconds": round(setup_seconds, 2),
            "train_seconds": round(rows[0]["train_seconds"], 2),
            "train_only_images_per_sec": round(rows[0]["examples_per_sec"], 1),
        },
        "steady": {
            "images_per_sec_median": round(statistics.median(steady), 1) if steady else None,
            "images_per_sec_best": round(max(steady), 1) if steady else None,
            "per_epoch": [round(r, 1) for r in steady],
            "eval_seconds_per_epoch": round(statistics.median(
                [r["epoch_seconds"] - r["train_seconds"] for r in rows[1:]]), 3) if steady else None,
        },
        "train_loss_last": round(rows[-1]["train_loss"], 4), "test_acc_last": round(rows[-1]["test_acc"], 4),
    }
    out["parts"] = parts_alone(run, data, config, device)
    out["_run"] = run  # removed before writing: the model for the predict part
    return out


def parts_alone(run: WorkerRun, data: ImageClassData, config: FinetuneConfig, device: torch.device) -> dict:
    """The input pipeline alone (one epoch of views + CropTrain) and the training step alone
    (one fixed float batch, as many steps as an epoch has), both synchronised."""
    source = InMemorySource(data, device, config.seed)  # another copy on the device: set-up only
    generator = torch.Generator(device=device).manual_seed(1)
    sync(device)
    start = time.perf_counter()
    batches, n = source.train_batches(99, config.batch_size)
    fixed = None
    for images, _labels in batches:
        x = run.train_transform(images, generator)
        fixed = x if fixed is None else fixed  # a full batch: the first
    sync(device)
    input_seconds = time.perf_counter() - start
    steps = math.ceil(n / config.batch_size)
    labels = torch.randint(0, len(data.classes), (len(fixed),), device=device)

    def same_batch(k: int):
        for _ in range(k):
            yield fixed, labels

    def identity(images, generator=None):
        return images

    train_one_epoch(run.model, run.optimizer, same_batch(2), 2 * len(fixed), identity, None, config.precision,
                    FinetuneRecipe.loss_reduction)  # warm-up
    step = train_one_epoch(run.model, run.optimizer, same_batch(steps), steps * len(fixed), identity, None,
                           config.precision, FinetuneRecipe.loss_reduction)
    del source
    return {"input_pipeline_images_per_sec": round(n / input_seconds, 1),
            "train_step_only_images_per_sec": round(step["examples"] / step["seconds"], 1)}


def make_run_folder(directory: Path, run: WorkerRun | None, classes: list[str], crop: int) -> Path:
    """model.pt of the fine-tuned run, or of a fresh resnet18 when fine-tuning was skipped."""
    if run is not None:
        state = run.state_dict()
    else:
        state = {"model": models.build_model("resnet18", len(classes)).state_dict(), "arch": "resnet18",
                 "transform": {"preset": "crop", "crop_size": crop, "normalization": "imagenet"},
                 "classes": classes, "config": {}, "epoch": 1}
    directory.mkdir(parents=True, exist_ok=True)
    runs.save_model(str(directory), state)
    return directory


def predict(run_dir: Path, root: Path, out_dir: Path, device: torch.device, threads: int, batch: int,
            rows_per_call: int) -> dict:
    """The predict job's decode stage and actor stage over every file of `root`, timed apart."""
    model = open_run(str(run_dir))
    src, dst = folders.open_folder(str(root)), folders.open_folder(str(out_dir))
    run_id = uuid.uuid4().hex[:12]
    todo = plan_work(src, dst, run_id, overwrite=True, kind=PREDICT_MANIFEST).todo
    chunks = [pa.Table.from_pylist(todo[i:i + FILES_PER_DECODE_CALL])
              for i in range(0, len(todo), FILES_PER_DECODE_CALL)]

    def decode(table: pa.Table) -> pa.Table:
        return decode_batch(table, src=src, dst=dst, spec=model.spec, run_id=run_id)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        decoded = pa.concat_tables(list(pool.map(decode, chunks)))
    decode_seconds = time.perf_counter() - start
    n = decoded.num_rows

    actor = PredictActor(model_path=model.path, classes=model.classes, dst=dst, run_id=run_id, batch_size=batch,
                         threads=None, use_gpu=device.type == "cuda")
    start = time.perf_counter()
    actor(decoded.slice(0, min(n, rows_per_call)))  # warm-up (cuDNN, allocator); timed apart
    sync(device)
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    statuses = []
    for first in range(0, n, rows_per_call):
        statuses += actor(decoded.slice(first, rows_per_call)).column("status").to_pylist()
    sync(device)
    actor_seconds = time.perf_counter() - start

    rows = sorted(decoded.to_pylist(), key=lambda r: (r["height"], r["width"]))
    arrays = [np.frombuffer(r["pixels"], np.uint8).reshape(r["height"], r["width"], 3) for r in rows]
    start = time.perf_counter()
    for first in range(0, n, batch):
        predict_arrays(actor.model, actor.transform, arrays[first:first + batch], actor.device)
    sync(device)
    forward_seconds = time.perf_counter() - start
    return {
        "images": n, "done": statuses.count("done"), "decode_spec": {"mode": model.spec.mode, "size": model.spec.size},
        "decode_threads": threads, "decode_images_per_sec": round(n / decode_seconds, 1),
        "actor_images_per_sec": round(n / actor_seconds, 1), "actor_warmup_seconds": round(warmup_seconds, 2),
        "predict_arrays_images_per_sec": round(n / forward_seconds, 1),
        "decode_then_actor_images_per_sec": round(n / (decode_seconds + actor_seconds), 1),
        "pipelined_estimate_images_per_sec": round(n / max(decode_seconds, actor_seconds), 1),
        "batch_size": batch, "rows_per_actor_call": rows_per_call,
        "note": "decode_then_actor: the two stages one after the other in one process; pipelined_estimate: "
                "the slower stage alone, as when Ray Data overlaps decode tasks and the actor",
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--images", type=int, default=None, help="training images (default 2000; --tiny 32); "
                        "the test split gets a quarter as many")
    parser.add_argument("--epochs", type=int, default=None, help="default 8 (--tiny 2); at least 2")
    parser.add_argument("--precision", default="bf16", help="bf16, fp32 or both (comma-separated)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128, the lab's (--tiny 16)")
    parser.add_argument("--max-seconds", type=float, default=180, help="skip the parts past this budget")
    parser.add_argument("--data", type=Path, default=None, help="folder with images/{content,style} "
                        "(default .devdata if it has them, else ../shared/data)")
    parser.add_argument("--device", default=None, help="default cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's; --tiny on a "
                        "CPU: 1, since 2 threads on 2 busy cores run ~10x slower)")
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="everything at crop 64 on a few dozen small images")
    args = parser.parse_args(argv)
    precisions = args.precision.split(",")
    if any(p not in ("bf16", "fp32") for p in precisions):
        parser.error("--precision: bf16, fp32 or bf16,fp32")
    tiny = args.tiny
    images = args.images or (32 if tiny else 2000)
    epochs = max(2, args.epochs or (2 if tiny else 8))
    batch_size = args.batch_size or (16 if tiny else 128)
    crop = 64 if tiny else 224
    t0 = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = args.threads or (1 if tiny and device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True
    result = {
        "benchmark": "gpu_finetune",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "tiny": tiny,
        "target_steady_images_per_sec": TARGET_STEADY, "lab_images_per_sec_two_gpus": LAB_IMAGES_PER_SEC,
        "finetune": [], "skipped": [],
    }
    os.makedirs(args.out, exist_ok=True)

    def save() -> None:  # after every part: a timeout later keeps what was measured
        result["seconds"] = round(time.perf_counter() - t0, 1)
        with open(os.path.join(args.out, "gpu_finetune.json"), "w") as f:
            json.dump(result, f, indent=1)

    with tempfile.TemporaryDirectory(prefix="gpu_finetune_") as tmp:
        root = Path(tmp) / "folder"
        start = time.perf_counter()
        sizes = {"small": (96, 160), "large": (200, 320)} if tiny else {}
        result["folder"] = write_photo_folder(root, images, data_dir=args.data or default_data_dir(), **sizes)
        result["folder"]["build_seconds"] = round(time.perf_counter() - start, 1)
        log(f"folder: {result['folder']}")
        save()

        run = None
        data = None
        for precision in precisions:
            elapsed = time.perf_counter() - t0
            if elapsed > 0.6 * args.max_seconds:
                result["skipped"].append(f"finetune {precision} (time budget: {elapsed:.0f} s used)")
                continue
            config = FinetuneRecipe().resolve(FinetuneConfig(
                data_dir=str(root), scratch=True, crop_size=crop, precision=precision, epochs=epochs,
                batch_size=batch_size, eval_batch_size=256 if not tiny else 64, seed=0))
            start = time.perf_counter()
            data = load_image_folder(config)  # decoded again per precision: each first epoch pays its decode
            decode_seconds = time.perf_counter() - start
            # the epochs stop at the time that leaves a third of the budget to what follows
            deadline = t0 + (0.6 if precision != precisions[-1] else 0.7) * args.max_seconds
            try:
                outcome = finetune(data, config, device, decode_seconds, deadline)
                run = outcome.pop("_run")
                if outcome["epochs"] < epochs:
                    result["skipped"].append(f"finetune {precision}: epochs {outcome['epochs'] + 1}-{epochs} "
                                             "(time budget)")
            except Exception as exc:  # report, keep the other parts
                outcome = {"precision": precision, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            result["finetune"].append(outcome)
            log(json.dumps(outcome))
            save()
        steady = [f["steady"]["images_per_sec_median"] for f in result["finetune"] if f.get("steady")]
        if steady:
            result["steady_images_per_sec"] = max(s for s in steady if s is not None)
            result["meets_target"] = result["steady_images_per_sec"] >= TARGET_STEADY
        if run is not None:
            del run.data  # the training data's device copy: free it before predicting
            if device.type == "cuda":
                torch.cuda.empty_cache()

        elapsed = time.perf_counter() - t0
        if args.skip_predict:
            result["skipped"].append("predict (--skip-predict)")
        elif elapsed > 0.85 * args.max_seconds:
            result["skipped"].append(f"predict (time budget: {elapsed:.0f} s used)")
        else:
            classes = data.classes if data is not None else result["folder"]["classes"]
            run_dir = make_run_folder(Path(tmp) / "run", run, classes, crop)
            try:
                result["predict"] = predict(run_dir, root, Path(tmp) / "predicted", device,
                                            threads=min(16, os.cpu_count() or 1), batch=8 if tiny else PREDICT_BATCH,
                                            rows_per_call=16 if tiny else ROWS_PER_ACTOR_CALL)
            except Exception as exc:
                result["predict"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            log(json.dumps(result["predict"]))
        save()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
