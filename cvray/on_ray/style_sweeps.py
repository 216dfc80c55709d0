"""Ray Tune glue for style sweeps: each trial is one stylisation (cvray.style.stylizer) with the
swept weights, measured on one fixed set of taps (cvray.style.sweep.unweighted_losses) so trials
compare, its image saved. Trials are plain Tune functions (tune.report); on GPUs several share a
GPU (cvray.style.sweep.gpu_fraction_per_trial)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from ray import tune

from cvray import storage
from cvray.classification import runs
from cvray.errors import ClusterError
from cvray.on_ray.connect import check_reachable, connect
from cvray.on_ray.placement import resolve_gpu
from cvray.on_ray.storage_check import check_storage_visible
from cvray.on_ray.sweeps import error_line, fit, make_tuner, open_sweep, search_space, trial_count, was_interrupted
from cvray.params import ParamSpec
from cvray.style.config import StyleConfig

log = logging.getLogger(__name__)

IMAGES_FOLDER = "images"
LOSS_KEYS = ("content_loss", "style_loss", "tv_loss")


@dataclass(frozen=True)
class StyleSweep:
    config: StyleConfig
    params: tuple[ParamSpec, ...]
    name: str
    storage_path: str
    inputs: tuple[str, ...]
    """The content and style image paths (part of what makes a rerun the same sweep)."""
    search: str = "grid"
    num_samples: int = 1
    retry_failed: bool = True
    max_concurrent: int | None = None
    use_gpu: bool | None = None
    gpu_memory_gib: float = 80.0

    def spec(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "inputs": list(self.inputs), "search": self.search,
                "num_samples": self.num_samples,
                "params": [[p.field, list(p.values) if p.values else None, p.low, p.high] for p in self.params]}


def style_trial_fn(params: dict[str, Any], *, shared: dict[str, Any]) -> None:
    """One stylisation: the swept values on the fixed config; reports the unweighted losses."""
    import torch

    from cvray.images import png_bytes, to_pil
    from cvray.style.presets import validate_style_config
    from cvray.style.stylizer import Stylizer
    from cvray.style.sweep import loss_meter, unweighted_losses
    from cvray.style.vgg import build_vgg_features

    config = dataclasses.replace(shared["config"], **{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in params.items()})
    validate_style_config(config, n_styles=len(shared["styles"]))
    torch.set_num_threads(shared["threads"])
    device = "cuda" if shared["use_gpu"] else "cpu"
    torch.manual_seed(0)  # "random" weights: the same network in every trial
    features = build_vgg_features(config.arch, config.weights)
    stylizer = Stylizer(config, shared["styles"], device=device, features=features)
    contents = stylizer.prepare_content(shared["content"]).unsqueeze(0)
    result = stylizer.stylize(contents)
    meter = loss_meter(config, shared["styles"], features=features, device=device)
    losses = unweighted_losses(meter, result.images, contents.to(device))[0]
    path = storage.join(shared["images_dir"], f"trial-{tune.get_context().get_trial_id()}.png")
    storage.write_bytes_atomic(path, png_bytes(to_pil(result.images[0])))
    tune.report({**losses, "seconds": result.seconds, "image": path})


@dataclass
class StyleSweepOutcome:
    directory: str
    rows: list[dict[str, Any]]
    front: list[dict[str, Any]]
    interrupted: bool


def run_style_sweep(sweep: StyleSweep, content, styles, *, address: str | None = None, fresh: bool = False,
                    verbose: bool = False) -> StyleSweepOutcome:
    """Run (or resume) a style sweep: table, contact sheet, Pareto picture, rows."""
    check_reachable(address or os.environ.get("RAY_ADDRESS"))
    from cvray.style.sweep import gpu_fraction_per_trial

    space = search_space(sweep.params, sweep.search)
    cluster = connect(address, quiet=not verbose)
    check_storage_visible(runs.absolute(sweep.storage_path))  # trials write their images there
    use_gpu = resolve_gpu(sweep.use_gpu, cluster)
    height, width = sweep.config.output_size(*content.size)
    if use_gpu:
        resources = {"cpu": 1, "gpu": gpu_fraction_per_trial(height, width, 1, sweep.gpu_memory_gib)}
    else:
        resources = {"cpu": 1}
        if cluster.cpus < 1:
            raise ClusterError(f"a style trial needs 1 CPU; the cluster has {cluster.cpus:g}")
    storage_path = runs.absolute(sweep.storage_path)
    directory = storage.join(storage_path, sweep.name)
    open_sweep(directory, sweep.spec(), fresh)
    shared = {"config": sweep.config, "content": content, "styles": list(styles), "threads": 1,
              "use_gpu": use_gpu, "images_dir": storage.join(directory, IMAGES_FOLDER)}
    trainable = tune.with_resources(tune.with_parameters(style_trial_fn, shared=shared), resources)
    log.info(f"style sweep {sweep.name}: {height}x{width}, trials on {'GPU' if use_gpu else 'CPU'} "
             f"({resources}) -> {directory}")
    tuner = make_tuner(trainable, space, name=sweep.name, storage_path=storage_path, directory=directory,
                       search=sweep.search, num_samples=sweep.num_samples, concurrency=sweep.max_concurrent,
                       retry_failed=sweep.retry_failed, seed=sweep.config.seed, metric="style_loss", mode="min")
    results, ctrl_c = fit(tuner)
    rows = [_row(result, sweep, directory) for result in results]
    interrupted = was_interrupted(results, ctrl_c, trial_count(sweep.params, sweep.search, sweep.num_samples))
    return _report(directory, sweep, rows, interrupted)


def _row(result, sweep: StyleSweep, directory: str) -> dict[str, Any]:
    config = result.config or {}
    metrics = result.metrics or {}
    values = {p.field: tuple(v) if isinstance(v := config.get(p.field), list) else v for p in sweep.params}
    ran = all(k in metrics for k in LOSS_KEYS)
    status = "failed" if result.error is not None else "finished" if ran else "not run"
    trial = os.path.basename(result.path or "")
    return {**values, "trial": trial, "status": status,
            "error": "" if result.error is None else error_line(result.error),
            **{k: float(metrics[k]) if ran else math.nan for k in LOSS_KEYS},
            "seconds": float(metrics.get("seconds", 0.0)),
            "image": metrics.get("image", storage.join(directory, IMAGES_FOLDER, f"{trial}.png") if ran else "")}


def _report(directory: str, sweep: StyleSweep, rows: list[dict[str, Any]], interrupted: bool) -> StyleSweepOutcome:
    from cvray import sweep_report
    from cvray.images import load_image
    from cvray.style.sweep import contact_sheet_png, pareto_front, pareto_png, swept_label

    swept = [p.field for p in sweep.params]
    rows.sort(key=lambda r: sweep_report.swept_order(r, swept))
    columns = [*swept, "trial", "status", "error", *LOSS_KEYS, "seconds", "image"]
    sweep_report.write_table(directory, rows, swept, columns=columns)
    done = [r for r in rows if r["status"] == "finished"]
    if done:
        tiles = [(load_image(r["image"]), swept_label({f: r[f] for f in swept})) for r in done]
        storage.write_bytes_atomic(storage.join(directory, "contact_sheet.png"), contact_sheet_png(tiles))
        storage.write_bytes_atomic(storage.join(directory, "pareto.png"), pareto_png(
            done, label_keys=swept, title=f"style sweep {sweep.name}: unweighted losses"))
    front = [done[i] for i in pareto_front([(r["content_loss"], r["style_loss"]) for r in done])]
    return StyleSweepOutcome(directory, rows, front, interrupted)

