"""A driver for a recipe that cvray does not ship (torchvision ResNet-18 at 32 px, SGD with two
parameter groups: the body at lr, the fc head at 10x lr), trained through cvray's one training
path: run_training -> launch_training -> train_fn_per_worker -> WorkerRun.

    python tests/on_ray/recipe_driver.py --address HOST:PORT --data-dir CIFAR --storage-path DIR

Run as a script, the recipe class lives in __main__, which Ray pickles by value: the workers get
it without it being importable there. Prints `SUMMARY {json}` last.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from cvray.classification.config import CifarTrainConfig  # noqa: E402
from cvray.classification.recipes import CifarRecipe, head_and_body_groups  # noqa: E402
from cvray.console import configure_logging  # noqa: E402
from cvray.on_ray.training import run_training  # noqa: E402

HEAD_LR_MULT = 10.0


class SgdResNetRecipe(CifarRecipe):
    name = "test-resnet18-sgd"

    def arch(self, config: CifarTrainConfig) -> str:
        return "resnet18"

    def build_optimizer(self, config: CifarTrainConfig, model: torch.nn.Module, device) -> torch.optim.SGD:
        groups = head_and_body_groups(model, config.lr, HEAD_LR_MULT)
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, weight_decay=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--storage-path", required=True)
    args = parser.parse_args()
    configure_logging()
    config = CifarTrainConfig(
        data_dir=args.data_dir, storage_path=args.storage_path, name="second-recipe", epochs=1, batch_size=64,
        lr=0.02, precision="fp32", num_workers=2, cpus_per_worker=1, use_gpu=False, progress_every_s=0,
    )
    summary = run_training(SgdResNetRecipe(), config, address=args.address)
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
