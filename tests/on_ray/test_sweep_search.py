"""The sweeps' search set-up on a real Ray Tune: Optuna's TPE and random search over a --param
space, through the same make_tuner the sweep jobs use (a cheap function trial, not a training)."""

import math

import pytest
from ray import tune

from cvray.classification.config import CifarTrainConfig
from cvray.on_ray.sweeps import make_tuner, search_space
from cvray.params import parse_param

SWEEPABLE = {"lr", "batch_size", "aug"}


@pytest.mark.parametrize("search", ["optuna", "random"])
def test_searches_draw_inside_the_space(ray_local, tmp_path, search):
    def quadratic_trial(config):  # local: pickled by value (workers cannot import test modules)
        """val_acc peaks at lr = 1e-3; batch size adds a little."""
        tune.report({"val_acc": 1.0 - (math.log10(config["lr"]) + 3) ** 2 / 10 + config["batch_size"] / 1e4,
                     "epoch": 1})

    params = (parse_param("lr=1e-5..1e-1", CifarTrainConfig, SWEEPABLE),
              parse_param("batch-size=32|64", CifarTrainConfig, SWEEPABLE))
    space = search_space(params, search)
    tuner = make_tuner(tune.with_resources(quadratic_trial, {"cpu": 0.05}), space, name="s",
                       storage_path=str(tmp_path), directory=str(tmp_path / "s"), search=search, num_samples=6,
                       concurrency=2, retry_failed=False, seed=0, metric="val_acc", mode="max")
    results = tuner.fit()
    assert len(results) == 6 and not results.errors
    configs = [r.config for r in results]
    assert all(1e-5 <= c["lr"] <= 1e-1 and c["batch_size"] in (32, 64) for c in configs)
    assert len({c["lr"] for c in configs}) == 6  # drawn, not repeated
    best = results.get_best_result()
    assert best.metrics["val_acc"] == max(r.metrics["val_acc"] for r in results)
    assert (tmp_path / "s").is_dir() and tune.Tuner.can_restore(str(tmp_path / "s"))
