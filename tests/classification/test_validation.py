"""The validation share held out of the training data, and runs that diverge failing."""

import numpy as np
import pytest
import torch

from cvray.classification.cifar import load_cifar10
from cvray.classification.config import CifarTrainConfig
from cvray.classification.datasets import InMemorySource, RaggedImages, take, validation_split
from cvray.classification.recipes import CifarRecipe
from cvray.classification.worker import TrainingDiverged, fit
from cvray.errors import ConfigError


def test_the_split_is_fixed_disjoint_and_complete():
    keep, held = validation_split(100, 0.1)
    assert len(held) == 10 and len(keep) == 90
    assert sorted(torch.cat((keep, held)).tolist()) == list(range(100))
    again_keep, again_held = validation_split(100, 0.1)
    assert torch.equal(held, again_held) and torch.equal(keep, again_keep)
    assert len(validation_split(5, 0.01)[1]) == 1  # at least one image
    keep, held = validation_split(7, 0.0)
    assert held.numel() == 0 and keep.tolist() == list(range(7))


def test_ragged_images_are_taken_whole():
    arrays = [np.full((h, w, 3), i, np.uint8) for i, (h, w) in enumerate([(4, 6), (5, 3), (2, 2), (7, 1)])]
    ragged = RaggedImages.from_arrays(arrays)
    picked = take(ragged, torch.tensor([3, 1]))
    assert len(picked) == 2 and picked.sizes.tolist() == [[7, 1], [5, 3]]
    assert (picked.image(0) == 3).all() and (picked.image(1) == 1).all()


def test_a_source_holds_the_share_out_of_training_only(tiny_cifar):
    data = load_cifar10(str(tiny_cifar), download=False)
    source = InMemorySource(data, torch.device("cpu"), seed=3, val_share=0.25)
    assert (len(source.train), len(source.val), len(source.test)) == (96, 32, 64)
    other_seed = InMemorySource(data, torch.device("cpu"), seed=4, val_share=0.25)
    assert torch.equal(source.val.images, other_seed.val.images)  # the same images whatever the seed
    train_rows = {bytes(x.numpy()) for x in source.train.images}
    assert not any(bytes(x.numpy()) in train_rows for x in source.val.images)
    assert list(InMemorySource(data, torch.device("cpu"), seed=3).val_batches(16)) == []


def test_runs_report_validation_accuracy_only_with_a_share(tiny_cifar):
    data = load_cifar10(str(tiny_cifar), download=False, train_samples=64, test_samples=16)
    base = dict(data_dir=str(tiny_cifar), epochs=1, batch_size=32, precision="fp32", eval_batch_size=64)
    with_val = fit(CifarRecipe(), CifarTrainConfig(**base, val_share=0.25), data, "cpu").history[-1]
    assert 0.0 <= with_val["val_acc"] <= 1.0 and with_val["train_examples"] == 48
    without = fit(CifarRecipe(), CifarTrainConfig(**base), data, "cpu").history[-1]
    assert without["val_acc"] is None and without["train_examples"] == 64


def test_a_diverging_learning_rate_fails_the_run(tiny_cifar):
    data = load_cifar10(str(tiny_cifar), download=False, train_samples=64, test_samples=16)
    config = CifarTrainConfig(data_dir=str(tiny_cifar), epochs=2, batch_size=16, precision="fp32", lr=1e12)
    with pytest.raises(TrainingDiverged, match="diverged"):
        fit(CifarRecipe(), config, data, "cpu")


def test_the_share_is_checked():
    with pytest.raises(ConfigError, match="val-share"):
        CifarTrainConfig(val_share=0.5)
    with pytest.raises(ConfigError, match="val-share"):
        CifarTrainConfig(val_share=-0.1)
