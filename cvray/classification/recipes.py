"""Training recipes: what differs between training jobs, behind one interface.

The training loop (cvray.classification.worker / engine), the Ray Train glue and the run folder
are shared by every job; a `Recipe` supplies the rest: the config class, a model factory, an
optimiser builder (with parameter groups), the dataset, the train/eval batch transforms and how
the loss is reduced. Recipes hold no state, so they pickle by reference and reach Ray workers as
they are. Plain PyTorch; no Ray.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from cvray.classification import models, transforms
from cvray.classification.config import CifarTrainConfig, TrainConfig
from cvray.classification.datasets import ImageClassData
from cvray.classification.engine import BatchTransform
from cvray.errors import ConfigError

LAB_ADAM_EPS = 1e-8  # torch's default, which the lab's Adam uses


def lab_adam(parameters, lr: float, batch_size: int, fused: bool | None = None) -> torch.optim.Adam:
    """The lab's Adam for a loop that averages the loss over the global batch of `batch_size`.

    The lab sums per-sample losses before backward (d2l's train_batch_ch13), so its gradients
    are batch_size times ours. Adam ignores that factor except through eps (Adam with eps on
    c * g takes the same steps as Adam with eps / c on g), so eps / batch_size reproduces the
    lab's updates exactly on full batches (tests/classification/test_engine.py). With eps itself,
    parameters whose gradients are ~1e-8 or smaller would move differently.
    """
    return torch.optim.Adam(parameters, lr=lr, eps=LAB_ADAM_EPS / batch_size, fused=fused)


def head_and_body_groups(model: nn.Module, lr: float, head_lr_mult: float, head: str = "fc") -> list[dict]:
    """Two parameter groups: the module named `head` at lr * head_lr_mult, the rest at lr
    (the lab's fine-tuning: a new output layer learns 10x faster than the pretrained body)."""
    prefix = f"{head}."
    head_params = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    if not head_params:
        raise ConfigError(f"the model has no parameters under {head!r} to use as the head")
    body_params = [p for n, p in model.named_parameters() if not n.startswith(prefix)]
    return [{"params": body_params, "lr": lr}, {"params": head_params, "lr": lr * head_lr_mult}]


class Recipe:
    """A training job's recipe. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    """Recorded in the run folder: a run resumes only under the recipe that started it."""
    config_class: ClassVar[type[TrainConfig]] = TrainConfig
    loss_reduction: ClassVar[str] = "mean"
    """"mean" or "sum" (the lab's `.sum()`; see cvray.classification.engine.train_one_epoch)."""

    def arch(self, config: TrainConfig) -> str:
        """The architecture name (cvray.classification.models.ARCHS) this run trains."""
        raise NotImplementedError

    def resolve(self, config: TrainConfig) -> TrainConfig:
        """The config with what it leaves open decided (sizes, normalisation, ...), before the run
        folder is named; ConfigError for conflicting settings. Default: as it is."""
        return config

    def check(self, config: TrainConfig) -> None:
        """Checks that need more than the config (weights files, earlier runs), made where the job
        starts so that bad input fails before training. Default: none."""

    def streams(self, config: TrainConfig) -> bool:
        """True: the data is streamed through Ray Data each epoch (too large to hold decoded);
        False: load_data() decodes it once. Default: False."""
        return False

    def build_model(self, config: TrainConfig, num_classes: int) -> nn.Module:
        return models.build_model(self.arch(config), num_classes)

    def build_optimizer(self, config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
        """The optimiser over `model`'s parameters (the plain module, not a DDP wrapper)."""
        raise NotImplementedError

    def load_data(self, config: TrainConfig) -> ImageClassData:
        """The labelled images, in host memory; DataError (one line) when they cannot be read."""
        raise NotImplementedError

    def transform(self, config: TrainConfig) -> dict[str, Any]:
        """The input the model expects: keyword arguments of cvray.classification.transforms'
        eval_transform (preset, crop_size, normalization); recorded in model.pt for prediction."""
        return {"preset": "cifar"}

    def train_transform(self, config: TrainConfig) -> BatchTransform:
        return transforms.train_transform(**self.transform(config))

    def eval_transform(self, config: TrainConfig) -> BatchTransform:
        return transforms.eval_transform(**self.transform(config))

    def model_info(self, config: TrainConfig) -> dict[str, Any]:
        """What model.pt records to rebuild the model and feed it (cvray.classification.runs.load_model)."""
        info = {"arch": self.arch(config), "transform": self.transform(config)}
        decode_size = getattr(config, "decode_size", None)  # images decoded once at this shorter side
        return info if decode_size is None else {**info, "decode_size": int(decode_size)}

    def config_from_dict(self, data: dict[str, Any]) -> TrainConfig:
        return self.config_class.from_dict(data)


class CifarRecipe(Recipe):
    """The lab's CIFAR-10 augmentation recipe: d2l ResNet-18, Xavier init, the lab's Adam, flip."""

    name = "cifar10"
    config_class = CifarTrainConfig

    def arch(self, config: CifarTrainConfig) -> str:
        return "d2l_resnet18"

    def build_optimizer(self, config: CifarTrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Adam:
        # fused Adam: one kernel for all parameters on CUDA; the foreach default elsewhere.
        fused = True if device.type == "cuda" else None
        return lab_adam(model.parameters(), config.lr, config.batch_size, fused=fused)

    def load_data(self, config: CifarTrainConfig) -> ImageClassData:
        from cvray.classification.cifar import load_cifar10

        return load_cifar10(config.data_dir, train_samples=config.train_samples, test_samples=config.test_samples,
                            classes=config.classes)

    def train_transform(self, config: CifarTrainConfig) -> BatchTransform:
        return transforms.train_transform("cifar", aug=config.aug)


def get_recipe(name: str) -> Recipe:
    """The recipe of a run by its recorded name: "cifar10" or "finetune"."""
    from cvray.classification.finetune import FinetuneRecipe  # it imports this module

    recipes = {recipe.name: recipe for recipe in (CifarRecipe(), FinetuneRecipe())}
    if name not in recipes:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(recipes)}")
    return recipes[name]
