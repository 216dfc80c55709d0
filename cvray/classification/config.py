"""Training job configs: one frozen dataclass per job, defaults = the d2l lab's numbers.

`TrainConfig` holds what every training job shares (the run, where it runs, where it writes);
each recipe's config subclasses it with its own hyperparameters and the lab's defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cvray.config import JsonConfig
from cvray.errors import ConfigError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
"""CIFAR-10's classes in label order."""
AUG_PRESETS = ("none", "flip", "vflip", "crop", "brightness", "hue", "color", "all")
"""The lab's augmentation presets by name (cvray.classification.augment implements them)."""


def validate_names(names: Sequence[str]) -> tuple[str, ...]:
    """Return `names` as a tuple, or raise ConfigError naming the first unknown preset."""
    if isinstance(names, str):
        names = (names,)
    for name in names:
        if name not in AUG_PRESETS:
            raise ConfigError(f"unknown augmentation {name!r}; choose from {', '.join(AUG_PRESETS)}")
    return tuple(names)


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Fields every training job has. Subclasses set the lab's defaults for their recipe."""

    # --- hyperparameters: a resumed run must keep these ---
    batch_size: int = 256
    """Global batch (all workers together); each worker takes batch_size / num_workers."""
    lr: float = 1e-3
    """Learning rate (of the body, where a recipe has parameter groups)."""
    precision: str = "bf16"
    """bf16: bf16 autocast + channels_last on CUDA (CPU always runs fp32); fp32: the lab's numerics."""
    seed: int = 0
    """Seeds model init and the per-epoch shuffles; the same seed gives the same shards."""
    val_share: float = 0.0
    """Share of the training images held out for validation (the same ones whatever the seed);
    sweeps select on it (default 0.1 there), the test set stays unseen. 0: train on all."""

    # --- may change between a run and its resumption ---
    epochs: int = 10
    """Total epochs; rerunning with a larger value trains on from the last checkpoint."""
    num_workers: int | None = None
    """Ray Train workers (the most, with min_workers); None: one per GPU on a GPU cluster, else 1."""
    min_workers: int | None = None
    """Elastic training (--num-workers MIN-MAX): Ray Train runs on as many workers as the cluster
    can place, between this and num_workers, and restarts on the workers left when one is lost.
    None: exactly num_workers."""
    use_gpu: bool | None = None
    """None: use GPUs when the cluster has them."""
    cpus_per_worker: float | None = None
    """CPUs per worker (sets torch's thread count); None: a fair share of the cluster."""
    data_dir: str = ""
    """Where the data is (local path or URI)."""
    storage_path: str = "~/cvray_results"
    """Parent of run folders (shared storage or s3://... on multi-node clusters)."""
    name: str | None = None
    """Run folder name; None: derived from the hyperparameters."""
    max_failures: int = 0
    """Worker-group restarts from the latest checkpoint before the run fails."""
    eval_batch_size: int = 1024
    """Batch for test-set evaluation (per worker); only memory, not results, depend on it."""
    progress_every_s: float = 60.0
    """Seconds between progress lines inside an epoch (long CPU epochs); the epoch line always shows."""

    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "epochs", "num_workers", "min_workers", "use_gpu", "cpus_per_worker", "data_dir", "storage_path",
        "name", "max_failures", "eval_batch_size", "progress_every_s",
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_share < 0.5:
            raise ConfigError(f"--val-share must be in [0, 0.5), got {self.val_share}")
        if self.min_workers is not None and not 1 <= self.min_workers <= (self.num_workers or 1):
            raise ConfigError(f"--num-workers {self.min_workers}-{self.num_workers}: MIN must be 1 to MAX")

    def hyperparameters(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it resumes."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RESUMABLE}

    def default_name(self) -> str:
        return f"run-bs{self.batch_size}-lr{self.lr:g}-{self.precision}-s{self.seed}"


@dataclass(frozen=True)
class CifarTrainConfig(TrainConfig):
    """CIFAR-10 image-augmentation training (d2l section 14.1) on Ray Train."""

    aug: tuple[str, ...] = ("flip",)
    """Training augmentations, applied in this order per batch on the device (AUG_PRESETS)."""
    train_samples: int | None = None
    """Use only the first N training images (None: all 50,000). --smoke-test sets it."""
    test_samples: int | None = None
    """Use only the first N test images (None: all 10,000)."""
    classes: tuple[str, ...] | None = None
    """Train on these CIFAR-10 classes only (None: all ten), e.g. eight of them to pretrain a model
    that fine-tuning then adapts to the other two."""
    data_dir: str = "~/.cache/cvray/cifar10"
    """CIFAR-10 location: python batches, Parquet or image folders; downloaded when empty."""

    def default_name(self) -> str:
        aug = "+".join(self.aug)
        name = f"cifar10-resnet18-{aug}-bs{self.batch_size}-lr{self.lr:g}-{self.precision}-s{self.seed}"
        if self.classes is not None:
            name += f"-{len(self.classes)}classes"
        if self.train_samples is not None:
            name += f"-n{self.train_samples}"
        return name


DATA_PATHS = ("auto", "memory", "stream")


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Fine-tuning a pretrained ResNet on a labelled image folder (d2l section 14.2, hot dogs) on
    Ray Train. The defaults are the lab's: ImageNet ResNet-18, new 2-way fc (Xavier), SGD lr 5e-5,
    weight decay 1e-3, fc at 10x lr, global batch 128, 5 epochs, summed loss."""

    batch_size: int = 128
    lr: float = 5e-5
    """SGD learning rate of the pretrained body (the lab's scratch baseline: 5e-4, one group)."""
    epochs: int = 5
    data_dir: str = "~/.cache/cvray/hotdog"
    """train/<class>/... and test/<class>/... (local or URI); d2l's hotdog.zip is downloaded into
    this default folder when it is empty."""
    arch: str | None = None
    """cvray.classification.models.ARCHS; None: resnet18 (the lab), or the init_from run's."""
    weights: str | None = None
    """None: torchvision's IMAGENET1K_V1; else a state dict path or URI (torchvision layout)."""
    init_from: str | None = None
    """An earlier cvray run folder (or its model.pt) to start from; its head is replaced."""
    scratch: bool = False
    """The lab's baseline: the architecture from its default init, one parameter group."""
    head_lr_mult: float = 10.0
    """The new output layer's learning rate / lr (ignored with scratch)."""
    weight_decay: float = 1e-3
    crop_size: int | None = None
    """Training crop and evaluation centre crop (px); None: the architecture's input size."""
    decode_size: int | None = None
    """Each image is decoded once with its shorter side at this many px; None: the evaluation
    resize, round(crop_size * 256 / 224)."""
    normalization: str | None = None
    """Input normalisation, from the weights' origin: "imagenet", or "none" for a CIFAR-trained
    init_from run; None: decided when the run starts."""
    train_samples: int | None = None
    """Use a fixed, class-interleaved subset of N training images (None: all). --smoke-test sets it."""
    test_samples: int | None = None
    max_bad_share: float = 0.1
    """More unreadable files than this share of a split is an error, not a skip."""
    data_path: str = "auto"
    """memory: each worker holds the decoded images; stream: Ray Data decodes them on the cluster
    every epoch; auto: memory when the decoded images fit memory_budget_gb."""
    memory_budget_gb: float = 4.0
    """Decoded images (uint8) a worker may hold on its device for the memory path."""

    RESUMABLE: ClassVar[tuple[str, ...]] = (
        *TrainConfig.RESUMABLE, "max_bad_share", "data_path", "memory_budget_gb",
    )

    def default_name(self) -> str:
        start = "scratch" if self.scratch else ("init" if self.init_from else "pretrained")
        arch = self.arch or "resnet18"
        name = f"finetune-{arch}-{start}-bs{self.batch_size}-lr{self.lr:g}-{self.precision}-s{self.seed}"
        if self.crop_size is not None:
            name += f"-c{self.crop_size}"
        if self.train_samples is not None:
            name += f"-n{self.train_samples}"
        return name
