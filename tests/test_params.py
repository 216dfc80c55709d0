"""--param parsing against a job's config: types, grids, ranges and the one-line refusals."""

import pytest

from cvray.classification.config import CifarTrainConfig, FinetuneConfig
from cvray.errors import ConfigError
from cvray.params import check_not_fixed, grid_size, parse_param
from cvray.style.config import StyleConfig

CIFAR = {"lr", "batch_size", "aug", "seed", "precision"}


def test_values_take_the_fields_type():
    assert parse_param("lr=1e-3|0.01", CifarTrainConfig, CIFAR).values == (1e-3, 0.01)
    assert parse_param("batch-size=32|64", CifarTrainConfig, CIFAR).values == (32, 64)
    assert parse_param("aug=flip|flip,crop|all", CifarTrainConfig, CIFAR).values == (
        ("flip",), ("flip", "crop"), ("all",))
    assert parse_param("scratch=true|false", FinetuneConfig, {"scratch"}).values == (True, False)
    layers = parse_param("style-layers=relu1_1,relu2_1|relu3_1", StyleConfig, {"style_layers"})
    assert layers.values == (("relu1_1", "relu2_1"), ("relu3_1",)) and layers.flag == "style-layers"
    assert parse_param("lr=1e-3|1e-3", CifarTrainConfig, CIFAR).values == (1e-3,)  # repeats once


def test_ranges_are_log_uniform_bounds():
    spec = parse_param("lr=1e-4..1e-2", CifarTrainConfig, CIFAR)
    assert spec.is_range and (spec.low, spec.high) == (1e-4, 1e-2)
    assert grid_size([parse_param("lr=1|2|3", CifarTrainConfig, CIFAR),
                      parse_param("batch-size=8|16", CifarTrainConfig, CIFAR), spec]) == 6


@pytest.mark.parametrize("text, words", [
    ("momentum=0.9", "FIELD one of"),
    ("lr", "FIELD one of"),
    ("lr=abc", "'abc' is not a number"),
    ("batch-size=1.5", "is not a whole number"),
    ("lr=|", "no values"),
    ("lr=1e-2..1e-4", "0 < LOW <= HIGH"),
    ("lr=-1..1", "0 < LOW <= HIGH"),
    ("lr=nan|1", "is not a number"),
    ("aug=flip..all", "needs a numeric field"),
])
def test_refusals_are_one_line(text, words):
    with pytest.raises(ConfigError, match=words.replace("|", r"\|")) as info:
        parse_param(text, CifarTrainConfig, CIFAR)
    assert "\n" not in str(info.value)


def test_a_swept_field_cannot_also_be_fixed():
    spec = parse_param("lr=1|2", CifarTrainConfig, CIFAR)
    check_not_fixed([spec], {"batch_size"})
    with pytest.raises(ConfigError, match="drop the fixed --lr"):
        check_not_fixed([spec], {"lr"})
