"""The fine-tuning recipe without Ray: the lab's updates exactly (summed loss, SGD with weight
decay, a partial last batch, under DDP too), parameter groups, heads, starting weights, the data."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from torch import nn

from cvray.classification import runs
from cvray.classification.config import FinetuneConfig
from cvray.classification.datasets import DeviceDataset, RaggedImages
from cvray.classification.engine import train_one_epoch
from cvray.classification.finetune import FinetuneRecipe, load_image_folder
from cvray.classification.models import d2l_resnet18
from cvray.classification.transforms import CropEval
from cvray.errors import ConfigError, DataError
from cvray.net import free_port

RECIPE = FinetuneRecipe()


def lab_sgd_steps(net, images, labels, batches, lr, wd, transform, head_lr_mult=10.0):
    """The fine-tuning lab's loop (d2l train_fine_tuning + train_batch_ch13): SGD with the fc at
    10x lr and weight decay 1e-3, per-sample losses summed before backward."""
    params_1x = [p for name, p in net.named_parameters() if name not in ("fc.weight", "fc.bias")]
    trainer = torch.optim.SGD([{"params": params_1x}, {"params": net.fc.parameters(), "lr": lr * head_lr_mult}],
                              lr=lr, weight_decay=wd)
    loss = nn.CrossEntropyLoss(reduction="none")
    net.train()
    for batch in batches:
        trainer.zero_grad()
        per_sample = loss(net(transform(images[batch])), labels[batch])
        per_sample.sum().backward()
        trainer.step()


def tiny_task(n=40, side=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    order = torch.randperm(n, generator=g)
    return images, labels, order


def test_training_steps_match_the_labs_sgd_loop_with_a_partial_last_batch():
    torch.use_deterministic_algorithms(True)
    try:
        images, labels, order = tiny_task()
        batches = [order[i:i + 16] for i in range(0, 40, 16)]  # 16, 16 and a partial 8
        config = RECIPE.resolve(FinetuneConfig(scratch=False, crop_size=32, lr=0.05, precision="fp32"))
        torch.manual_seed(0)
        lab_net = torchvision.models.resnet18(num_classes=2)
        ours = torchvision.models.resnet18(num_classes=2)
        ours.load_state_dict(lab_net.state_dict())
        transform = CropEval(32, "imagenet")  # deterministic: the same input on both sides
        lab_sgd_steps(lab_net, images, labels, batches, lr=0.05, wd=1e-3, transform=transform)
        optimizer = RECIPE.build_optimizer(config, ours, torch.device("cpu"))
        data = DeviceDataset(images, labels)
        out = train_one_epoch(ours, optimizer, data.batches(torch.cat(batches), 16), 40, transform, None, "fp32",
                              loss_reduction=RECIPE.loss_reduction)
        assert out["examples"] == 40
        for name, param in ours.named_parameters():
            torch.testing.assert_close(param, dict(lab_net.named_parameters())[name], rtol=1e-4, atol=1e-6, msg=name)
        # The mean loss at the lab's lr takes other steps (B_t times smaller gradients).
        torch.manual_seed(0)
        mean = torchvision.models.resnet18(num_classes=2)
        train_one_epoch(mean, RECIPE.build_optimizer(config, mean, torch.device("cpu")),
                        data.batches(torch.cat(batches), 16), 40, transform, None, "fp32", loss_reduction="mean")
        assert not torch.allclose(mean.fc.weight, lab_net.fc.weight, rtol=1e-3, atol=1e-5)
    finally:
        torch.use_deterministic_algorithms(False)


class NoNormNet(nn.Module):
    """BatchNorm-free (DDP splits a batch's statistics, so only the loss scaling is compared)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.body(x))


def _ddp_worker(rank: int, port: int, state: dict, images, labels, order, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        net = NoNormNet()
        net.load_state_dict(state)
        config = RECIPE.resolve(FinetuneConfig(crop_size=16, lr=0.05, precision="fp32", arch="resnet18"))
        groups = [{"params": list(net.body.parameters()), "lr": config.lr},
                  {"params": list(net.fc.parameters()), "lr": config.lr * config.head_lr_mult}]
        optimizer = torch.optim.SGD(groups, lr=config.lr, weight_decay=config.weight_decay)
        model = nn.parallel.DistributedDataParallel(net)
        shard = torch.cat([order[i:i + 16][rank::2] for i in range(0, 40, 16)])  # half of every global batch
        data = DeviceDataset(images, labels)
        train_one_epoch(model, optimizer, data.batches(shard, 8), len(shard), CropEval(16, "imagenet"), None,
                        "fp32", loss_reduction=RECIPE.loss_reduction)
        if rank == 0:
            results.put({k: v.numpy().copy() for k, v in net.state_dict().items()})  # by value, not shared
    finally:
        dist.destroy_process_group()


def test_summed_loss_times_the_world_size_gives_the_labs_step_under_ddp():
    images, labels, order = tiny_task()
    torch.manual_seed(0)
    lab = NoNormNet()
    state = {k: v.clone() for k, v in lab.state_dict().items()}
    batches = [order[i:i + 16] for i in range(0, 40, 16)]  # global batches 16, 16, 8
    lab_sgd_steps(lab, images, labels, batches, lr=0.05, wd=1e-3, transform=CropEval(16, "imagenet"))
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    port = free_port()
    procs = [context.Process(target=_ddp_worker, args=(r, port, state, images, labels, order, results))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    ddp = results.get()
    for name, value in lab.state_dict().items():
        torch.testing.assert_close(torch.from_numpy(ddp[name]), value, rtol=1e-4, atol=1e-6, msg=name)


def test_parameter_groups_carry_lr_and_head_lr_and_the_head_has_the_class_count(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    config = RECIPE.resolve(FinetuneConfig(weights=str(weights)))
    model = RECIPE.build_model(config, num_classes=3)
    assert model.fc.out_features == 3 and config.crop_size == 224 and config.decode_size == 288
    assert config.normalization == "imagenet"
    backbone = torch.load(weights, weights_only=True)
    torch.testing.assert_close(model.conv1.weight, backbone["conv1.weight"])  # the body is the file's
    bound = (6 / (512 + 3)) ** 0.5  # the new head: Xavier-uniform
    assert model.fc.weight.abs().max() <= bound and not torch.equal(model.fc.weight[:1], backbone["fc.weight"][:1])
    optimizer = RECIPE.build_optimizer(config, model, torch.device("cpu"))
    body, head = optimizer.param_groups
    assert body["lr"] == 5e-5 and head["lr"] == pytest.approx(5e-4) and body["weight_decay"] == 1e-3
    assert {id(p) for p in head["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(body["params"]) == len(list(model.parameters())) - 2
    scratch = RECIPE.resolve(FinetuneConfig(scratch=True, lr=5e-4))
    (group,) = RECIPE.build_optimizer(scratch, RECIPE.build_model(scratch, 2), torch.device("cpu")).param_groups
    assert group["lr"] == 5e-4


def test_wrong_weight_files_are_one_line_errors(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    for path, words in ((tmp_path / "bad.pth", "not resnet18 weights"), (tmp_path / "none.pth", "file not found")):
        with pytest.raises(DataError, match=words):
            RECIPE.check(RECIPE.resolve(FinetuneConfig(weights=str(path))))


def test_init_from_a_run_keeps_its_weights_but_the_head_and_refuses_another_arch(tmp_path):
    torch.manual_seed(0)
    cifar = d2l_resnet18(num_classes=8)
    run = tmp_path / "cifar-run"
    runs.save_model(str(run), {"model": cifar.state_dict(), "config": {}, "classes": [str(i) for i in range(8)],
                               "epoch": 3, "arch": "d2l_resnet18", "transform": {"preset": "cifar"}})
    config = RECIPE.resolve(FinetuneConfig(init_from=str(run)))
    assert config.arch == "d2l_resnet18" and config.crop_size == 32 and config.normalization == "none"
    model = RECIPE.build_model(config, num_classes=2)
    for name, value in cifar.state_dict().items():
        if name.startswith("9."):
            continue
        torch.testing.assert_close(model.state_dict()[name], value, msg=name)
    assert model[9].out_features == 2
    groups = RECIPE.build_optimizer(config, model, torch.device("cpu")).param_groups
    assert {id(p) for p in groups[1]["params"]} == {id(model[9].weight), id(model[9].bias)}
    with pytest.raises(ConfigError, match="--arch resnet18 conflicts with --init-from"):
        RECIPE.resolve(FinetuneConfig(init_from=str(run), arch="resnet18"))
    with pytest.raises(ConfigError, match="--scratch"):
        RECIPE.resolve(FinetuneConfig(init_from=str(run), scratch=True))


def test_folder_data_decoded_once_at_the_shorter_side_with_bad_files_listed(tiny_folder):
    config = RECIPE.resolve(FinetuneConfig(data_dir=str(tiny_folder), scratch=True, crop_size=64))
    data = load_image_folder(config)
    assert data.classes == ["bright", "dark"] and config.decode_size == 82  # round(64 * 288 / 224)
    assert isinstance(data.train_images, RaggedImages) and len(data.train_images) == 64
    assert len(data.test_images) == 32
    sizes = data.train_images.sizes
    assert (sizes.min(dim=1).values == 82).all()  # every image: shorter side 82, aspect kept
    assert sorted(os.path.basename(name) for name, _ in data.skipped) == ["corrupt.jpg", "notes.txt"]
    assert data.train_labels.bincount().tolist() == [32, 32]


@pytest.mark.parametrize("layout, words", [
    ({"train/a/x.png", "train/b/y.png"}, "no test/ folder"),
    ({"train/a/x.png", "train/b/y.png", "test/a/x.png"}, "class 'b' has no test/ folder"),
    ({"train/a/x.png", "test/a/x.png"}, r"1 class folder\(s\) found"),
    ({"train/a/x.png", "train/b/", "test/a/x.png", "test/b/y.png"}, "empty class"),
])
def test_folder_layout_errors(tmp_path, layout, words):
    from PIL import Image

    for rel in layout:
        path = tmp_path / rel
        if rel.endswith("/"):
            path.mkdir(parents=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(DataError, match=words):
        load_image_folder(RECIPE.resolve(FinetuneConfig(data_dir=str(tmp_path), scratch=True, crop_size=8)))


def test_more_bad_files_than_the_share_is_an_error(tiny_folder):
    config = RECIPE.resolve(FinetuneConfig(data_dir=str(tiny_folder), scratch=True, crop_size=64,
                                           max_bad_share=0.01))
    with pytest.raises(DataError, match="1 of 65 files .* are unreadable .*--max-bad-share 0.01.*corrupt.jpg"):
        load_image_folder(config)
