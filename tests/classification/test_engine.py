"""The plain-PyTorch training engine: sharding, one epoch, evaluation, parity with the lab's loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cvray.classification.datasets import DeviceDataset, shard_indices
from cvray.classification.engine import all_reduce_sums, evaluate, train_one_epoch
from cvray.classification.models import d2l_resnet18
from cvray.classification.recipes import lab_adam
from cvray.classification.transforms import to_unit_float as to_float


@pytest.mark.parametrize("num_shards", [1, 2, 3, 4])
def test_shards_are_disjoint_equal_and_cover_the_data(num_shards):
    n = 103
    shards = [shard_indices(n, num_shards, s, seed=7, epoch=1) for s in range(num_shards)]
    seen = torch.cat(shards)
    assert len(set(seen.tolist())) == seen.numel()  # disjoint
    assert {len(s) for s in shards} == {n // num_shards}  # equal: same step count per worker
    assert n - seen.numel() < num_shards  # only the remainder sits out
    assert set(seen.tolist()) <= set(range(n))


def test_shards_reshuffle_every_epoch_and_depend_on_seed():
    a1 = shard_indices(100, 2, 0, seed=0, epoch=1)
    a2 = shard_indices(100, 2, 0, seed=0, epoch=2)
    b1 = shard_indices(100, 2, 0, seed=1, epoch=1)
    assert not torch.equal(a1, a2)
    assert not torch.equal(a1, b1)
    assert torch.equal(a1, shard_indices(100, 2, 0, seed=0, epoch=1))  # every worker computes the same


def colour_dataset(n: int = 96, seed: int = 0) -> DeviceDataset:
    """Images whose class is their dominant colour channel: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.randint(0, 60, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[torch.arange(n), labels] += 180
    return DeviceDataset(images, labels)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )


def test_train_one_epoch_learns_and_counts():
    data = colour_dataset()
    net = small_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    losses = []
    for epoch in range(1, 9):
        indices = shard_indices(len(data), 1, 0, seed=0, epoch=epoch)
        out = train_one_epoch(net, optimizer, data.batches(indices, 16), len(indices), to_float, None)
        assert out["examples"] == len(data)
        assert 0 <= out["correct"] <= len(data)
        losses.append(out["loss_sum"] / out["examples"])
    assert losses[-1] < 0.5 * losses[0]
    acc = evaluate(net, data.batches(torch.arange(len(data)), 40), to_float)
    assert acc["examples"] == len(data)
    assert acc["correct"] / len(data) > 0.9



def test_progress_reports_running_sums_that_end_at_the_epoch_totals():
    data = colour_dataset()
    net = small_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    calls = []
    indices = shard_indices(len(data), 1, 0, seed=0, epoch=1)
    out = train_one_epoch(net, optimizer, data.batches(indices, 16), len(indices), to_float, None,
                          progress=calls.append, progress_every_s=0)
    assert len(calls) == math.ceil(len(data) / 16)  # every step, with the interval at 0
    assert [c["examples"] for c in calls] == [min(16 * (i + 1), len(data)) for i in range(len(calls))]
    assert all(c["total"] == len(data) for c in calls)
    assert [c["seconds"] for c in calls] == sorted(c["seconds"] for c in calls)
    assert calls[-1]["loss_sum"] == pytest.approx(out["loss_sum"]) and calls[-1]["correct"] == out["correct"]
    quiet = []
    train_one_epoch(net, optimizer, data.batches(indices, 16), len(indices), to_float, None,
                    progress=quiet.append, progress_every_s=3600)
    assert quiet == []


def test_evaluate_matches_a_manual_count_and_restores_mode():
    data = colour_dataset(50, seed=3)
    net = small_net().train()
    subset = torch.arange(5, 45)
    out = evaluate(net, data.batches(subset, 7), to_float)
    assert net.training  # evaluate puts the mode back
    with torch.no_grad():
        net.eval()
        manual = (net(data.images[subset].float() / 255).argmax(1) == data.labels[subset]).sum().item()
    assert out == {"correct": float(manual), "examples": 40.0}


def test_all_reduce_is_identity_in_one_process():
    sums = {"a": 1.5, "b": 3.0}
    assert all_reduce_sums(sums, torch.device("cpu"), maximum=("b",)) == sums


def lab_train_steps(net, optimizer, images_u8, labels, batches):
    """The lab's training step as d2l's train_batch_ch13 writes it, fed as its DataLoader would
    be: PIL images through ToTensor, per-sample losses summed for backward. Returns the losses."""
    from PIL import Image
    from torchvision import transforms

    to_tensor = transforms.ToTensor()
    loss = nn.CrossEntropyLoss(reduction="none")
    net.train()
    losses = []
    for batch in batches:
        X = torch.stack([to_tensor(Image.fromarray(images_u8[i].permute(1, 2, 0).numpy())) for i in batch])
        y = labels[batch]
        optimizer.zero_grad()
        per_sample = loss(net(X), y)
        per_sample.sum().backward()
        optimizer.step()
        losses.append(float(per_sample.detach().mean()))
    return losses


def test_training_steps_match_the_labs_loop():
    """cvray's step (mean loss, on-device uint8 batches, lab_adam) trains the lab's model as the
    lab's loop does (summed loss, PIL + ToTensor, Adam's default eps): the same loss at every
    step, the same weights and eval-mode predictions. Pins the recipe's numerics (fp32, no aug)."""
    torch.use_deterministic_algorithms(True)
    try:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (96,), generator=generator)
        order = torch.randperm(96, generator=generator)
        batches = [order[i:i + 16] for i in range(0, 96, 16)]  # 6 steps
        torch.manual_seed(0)
        lab_net = d2l_resnet18()
        ours = d2l_resnet18()
        lab_net_start = {k: v.clone() for k, v in lab_net.state_dict().items()}
        ours.load_state_dict(lab_net_start)
        lab_losses = lab_train_steps(lab_net, torch.optim.Adam(lab_net.parameters(), lr=1e-3), images, labels, batches)
        data = DeviceDataset(images, labels)
        optimizer = lab_adam(ours.parameters(), lr=1e-3, batch_size=16)
        our_losses = []
        for batch in batches:  # one call per batch, to see every step's loss
            out = train_one_epoch(ours, optimizer, data.batches(batch, 16), 16, to_float, None, "fp32")
            our_losses.append(out["loss_sum"] / out["examples"])
        assert our_losses == pytest.approx(lab_losses, rel=1e-5)
        # Adam's default eps on our averaged loss drifts away from the lab within these 6 steps.
        plain = d2l_resnet18()
        plain.load_state_dict(lab_net_start)
        plain_optimizer, plain_losses = torch.optim.Adam(plain.parameters(), lr=1e-3), []
        for batch in batches:
            out = train_one_epoch(plain, plain_optimizer, data.batches(batch, 16), 16, to_float, None, "fp32")
            plain_losses.append(out["loss_sum"] / out["examples"])
        assert plain_losses != pytest.approx(lab_losses, rel=1e-3)
        lab_params, our_params = dict(lab_net.named_parameters()), dict(ours.named_parameters())
        for name, param in our_params.items():
            torch.testing.assert_close(param, lab_params[name], rtol=1e-4, atol=1e-6, msg=name)
        with torch.no_grad():
            probe = images[:16].float() / 255
            torch.testing.assert_close(ours.eval()(probe), lab_net.eval()(probe), rtol=1e-4, atol=1e-4)
    finally:
        torch.use_deterministic_algorithms(False)
