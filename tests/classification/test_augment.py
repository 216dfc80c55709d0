"""cvray.classification.augment (batched and torchvision presets), cvray.grids and jobs/aug_gallery.py."""

from __future__ import annotations

import aug_gallery
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from _common import run
from cvray.classification import augment
from cvray.classification.augment import BatchAugment, lab_transform
from cvray.classification.config import AUG_PRESETS
from cvray.errors import ConfigError, DataError
from cvray.grids import save_image_grid


def _images(batch=64, height=32, width=32, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=gen)


def _gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- BatchAugment contract


COMBINATIONS = [(name,) for name in AUG_PRESETS] + [("flip", "crop"), ("vflip", "hue", "brightness")]


@pytest.mark.parametrize("names", COMBINATIONS)
def test_every_preset_gives_float_unit_range_at_input_size(names):
    images = _images(batch=16, height=24, width=20)
    out = BatchAugment(names)(images, generator=_gen())
    assert out.dtype == torch.float32 and out.device == images.device
    assert out.shape == (16, 3, 24, 20)
    assert 0.0 <= out.min().item() and out.max().item() <= 1.0
    assert torch.isfinite(out).all()


def test_none_is_exactly_uint8_over_255():
    images = _images()
    out = BatchAugment(("none",))(images)
    assert torch.equal(out, images.float() / 255)


@pytest.mark.parametrize("name,dim", [("flip", -1), ("vflip", -2)])
def test_flips_flip_each_sample_or_leave_it(name, dim):
    images = _images(batch=200, height=8, width=8)
    out = BatchAugment((name,))(images, generator=_gen(1))
    reference = images.float() / 255
    flipped = torch.tensor([torch.equal(o, r.flip(dim)) for o, r in zip(out, reference, strict=True)])
    kept = torch.tensor([torch.equal(o, r) for o, r in zip(out, reference, strict=True)])
    assert (flipped | kept).all()  # every sample is one of the two outcomes, exactly
    assert flipped.any() and kept.any()


@pytest.mark.parametrize("name,dim", [("flip", -1), ("vflip", -2)])
def test_flip_probability_is_one_half(name, dim):
    images = _images(batch=4000, height=2, width=2, seed=3)
    images[:, :, 0, 0] = 0  # make every image asymmetric under both flips
    images[:, :, 1, 1] = 255
    out = (BatchAugment((name,))(images, generator=_gen(2)) * 255).round().to(torch.uint8)
    fraction = (out == images.flip(dim)).flatten(1).all(dim=1).float().mean().item()
    assert abs(fraction - 0.5) < 0.04  # 5 standard deviations at n = 4000


def test_crop_keeps_training_resolution_and_honours_out_size():
    images = _images(batch=32)
    assert BatchAugment(("crop",))(images, generator=_gen()).shape == (32, 3, 32, 32)
    assert BatchAugment(("crop",), out_size=(40, 24))(images, generator=_gen()).shape == (32, 3, 40, 24)
    assert BatchAugment(("all",), out_size=(16, 16))(images, generator=_gen()).shape == (32, 3, 16, 16)


def test_out_size_without_crop_resizes():
    images = _images(batch=4, height=16, width=16)
    images[:] = 77  # a constant image stays constant under any resize
    out = BatchAugment(("flip",), out_size=(32, 8))(images)
    assert out.shape == (4, 3, 32, 8)
    assert torch.allclose(out, torch.full_like(out, 77 / 255), atol=1e-6)


def test_crop_with_full_scale_and_square_ratio_is_identity():
    x = _images().float() / 255
    out = augment.random_resized_crop(x, (32, 32), scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=_gen())
    assert torch.allclose(out, x, atol=1e-6)


def test_crop_pixels_lie_within_each_source_range():
    images = _images(batch=64)
    images[:32] = images[:32] // 4 + 100  # half the batch lives in [100, 163]
    out = BatchAugment(("crop",))(images, generator=_gen(5))
    source = images.float().flatten(1) / 255
    result = out.flatten(1)
    assert (result.min(dim=1).values >= source.min(dim=1).values - 1e-6).all()
    assert (result.max(dim=1).values <= source.max(dim=1).values + 1e-6).all()


def test_crops_differ_per_sample():
    images = _images(batch=1).expand(16, -1, -1, -1).contiguous()
    out = BatchAugment(("crop",))(images, generator=_gen())
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) > 8


@pytest.mark.parametrize("box", [(0, 0, 32, 32), (3, 5, 10, 20), (10, 0, 22, 13), (0, 31, 32, 1)])
def test_resized_crop_matches_torchvision(box):
    x = _images(batch=4).float() / 255
    boxes = torch.tensor([box] * 4)
    ours = augment.resized_crop(x, boxes, (32, 32))
    theirs = TF.resized_crop(x, *box, [32, 32], antialias=False)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_crop_box_sampling_follows_torchvision():
    boxes = augment.sample_crop_boxes(20000, 32, 32, generator=_gen())
    top, left, h, w = boxes.unbind(1)
    assert ((top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32) & (h > 0) & (w > 0)).all()
    reference = v2.RandomResizedCrop(32, scale=(0.1, 1.0), ratio=(0.5, 2.0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        params = [reference.make_params([torch.zeros(3, 32, 32)]) for _ in range(4000)]
    ref_area = np.mean([p["height"] * p["width"] for p in params]) / 1024
    ref_aspect = np.mean([np.log(p["width"] / p["height"]) for p in params])
    area = (h * w).float().mean().item() / 1024
    aspect = torch.log(w.float() / h.float()).mean().item()
    assert abs(area - ref_area) < 0.02
    assert abs(aspect - ref_aspect) < 0.05


def test_crop_fallback_is_torchvisions_central_crop():
    # A 24x32 image cannot hold a full-area square: every try fails, so the fallback decides.
    boxes = augment.sample_crop_boxes(8, 24, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=_gen())
    ref = v2.RandomResizedCrop(24, scale=(1.0, 1.0), ratio=(1.0, 1.0)).make_params([torch.zeros(3, 24, 32)])
    expected = torch.tensor([ref["top"], ref["left"], ref["height"], ref["width"]])
    assert (boxes == expected).all()


# ---------------------------------------------------------------- colour


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.3, 1.5])
@pytest.mark.parametrize("ours,theirs", [
    (augment.adjust_brightness, TF.adjust_brightness),
    (augment.adjust_contrast, TF.adjust_contrast),
    (augment.adjust_saturation, TF.adjust_saturation),
])
def test_blend_adjustments_match_torchvision(ours, theirs, factor):
    x = _images(batch=8).float() / 255
    expected = torch.stack([theirs(image, factor) for image in x])
    assert torch.allclose(ours(x, torch.full((8,), factor)), expected, atol=1e-5)


@pytest.mark.parametrize("shift", [-0.5, -0.25, 0.1, 0.5])
def test_hue_matches_torchvision(shift):
    x = _images(batch=8).float() / 255
    x[0] = x[0, :1]  # one grey image: hue undefined, must stay grey
    expected = torch.stack([TF.adjust_hue(image, shift) for image in x])
    assert torch.allclose(augment.adjust_hue(x, torch.full((8,), shift)), expected, atol=1e-5)


def test_hsv_roundtrip_and_full_hue_cycle_are_identity():
    x = _images().float() / 255
    assert torch.allclose(augment.hsv_to_rgb(augment.rgb_to_hsv(x)), x, atol=1e-5)
    assert torch.allclose(augment.adjust_hue(x, torch.zeros(64)), x, atol=1e-5)
    assert torch.allclose(augment.adjust_hue(x, torch.ones(64)), x, atol=1e-5)
    hsv = augment.rgb_to_hsv(x)
    assert hsv.min() >= 0 and hsv[:, 0].max() < 1 and hsv.max() <= 1


def test_hue_keeps_each_pixels_max_and_min_channel():
    x = _images().float() / 255
    out = BatchAugment(("hue",))(_images(), generator=_gen())
    assert torch.allclose(out.amax(dim=1), x.amax(dim=1), atol=1e-5)
    assert torch.allclose(out.amin(dim=1), x.amin(dim=1), atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-2)


def test_brightness_scales_each_image_by_one_factor_in_range():
    images = _images(batch=256) // 2 + 1  # values in [1, 128]: no clamping up to factor 1.5
    out = BatchAugment(("brightness",))(images, generator=_gen())
    x = images.float() / 255
    ratio = out / x  # the same factor for every pixel of an image
    factor = ratio.flatten(1).median(dim=1).values
    assert torch.allclose(ratio, factor.view(-1, 1, 1, 1).expand_as(ratio), atol=1e-4)
    assert factor.min() >= 0.5 - 1e-6 and factor.max() <= 1.5 + 1e-6
    assert (factor < 0.9).any() and (factor > 1.1).any()


def test_color_jitter_changes_per_image_statistics():
    images = _images(batch=64)
    out = BatchAugment(("color",))(images, generator=_gen())
    x = images.float() / 255
    mean_change = (out.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs()
    assert (mean_change > 0.01).float().mean() > 0.5


def test_color_jitter_is_the_four_adjustments_in_a_drawn_order():
    x = _images(batch=8).float() / 255
    gen = _gen(7)
    factors = [torch.rand(8, generator=gen) for _ in range(4)]
    order = torch.randperm(4, generator=gen).tolist()
    expected = x
    ops = [augment.adjust_brightness, augment.adjust_contrast, augment.adjust_saturation, augment.adjust_hue]
    ranges = [(0.5, 1.5)] * 3 + [(-0.5, 0.5)]
    for i in order:
        low, high = ranges[i]
        expected = ops[i](expected, factors[i] * (high - low) + low)
    assert torch.allclose(augment.color_jitter(x, generator=_gen(7)), expected, atol=1e-6)


# ---------------------------------------------------------------- composition, determinism, errors


def test_all_is_flip_then_color_then_crop():
    images = _images(batch=16)
    a = BatchAugment(("all",))(images, generator=_gen(4))
    b = BatchAugment(("flip", "color", "crop"))(images, generator=_gen(4))
    assert torch.equal(a, b)


def test_same_seed_same_batch_other_seed_other_batch():
    images = _images(batch=16)
    for names in [("flip",), ("crop",), ("color",), ("all",), ("vflip", "hue")]:
        augmenter = BatchAugment(names)
        first = augmenter(images, generator=_gen(11))
        assert torch.equal(first, augmenter(images, generator=_gen(11)))
        assert not torch.equal(first, augmenter(images, generator=_gen(12)))


def test_unknown_name_raises_config_error_listing_valid_names():
    with pytest.raises(ConfigError) as info:
        BatchAugment(("flip", "rotate"))
    message = str(info.value)
    assert "'rotate'" in message and "\n" not in message
    assert all(name in message for name in AUG_PRESETS)
    with pytest.raises(ConfigError):
        lab_transform("sharpen")
    with pytest.raises(ConfigError):
        BatchAugment(("crop",), out_size=(32, 0))


def test_bad_images_raise_data_error():
    with pytest.raises(DataError):
        BatchAugment(("flip",))(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(DataError):
        BatchAugment(("flip",))(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(DataError):
        BatchAugment(("flip",))(torch.zeros(2, 3, 8, 8, dtype=torch.int64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_images_device_without_host_syncs():
    images = _images(batch=32).cuda()
    for names in [("all",), ("crop",), ("hue",), ("color",), ("flip", "vflip")]:
        augmenter = BatchAugment(names)
        torch.cuda.set_sync_debug_mode("error")  # any op that waits for the GPU raises
        try:
            first = augmenter(images, generator=torch.Generator(device="cuda").manual_seed(0))
            again = augmenter(images, generator=torch.Generator(device="cuda").manual_seed(0))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert first.device == images.device and first.dtype == torch.float32
        assert 0 <= first.min().item() and first.max().item() <= 1
        assert torch.equal(first, again)


def test_jitter_order_is_a_reproducible_permutation_that_varies_with_the_seed():
    orders = set()
    for seed in range(40):
        gen = _gen(seed)
        order = augment._jitter_order(gen)
        assert sorted(order) == [0, 1, 2, 3] and order == augment._jitter_order(_gen(seed))
        orders.add(tuple(order))
    assert len(orders) > 10


# ---------------------------------------------------------------- torchvision presets


def test_lab_transforms_on_pil_keep_or_set_size():
    image = Image.new("RGB", (64, 48), (200, 30, 40))
    for name in AUG_PRESETS:
        out = lab_transform(name)(image)
        assert isinstance(out, Image.Image)
        expected = (200, 200) if name in ("crop", "all") else (64, 48)
        assert out.size == expected, name
    assert lab_transform("crop", crop_size=(20, 30))(image).size == (30, 20)


def test_lab_brightness_preset_changes_only_brightness():
    image = Image.new("RGB", (8, 8), (100, 50, 20))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        outs = [np.asarray(lab_transform("brightness")(image), dtype=np.float64) for _ in range(10)]
    ratios = [out[0, 0] / np.array([100, 50, 20]) for out in outs]
    assert all(np.ptp(r) < 0.05 for r in ratios)  # one factor for all channels
    assert len({round(r[0], 2) for r in ratios}) > 5


# ---------------------------------------------------------------- gallery and job


def test_save_image_grid_accepts_mixed_images_and_ragged_rows(tmp_path):
    rows = [
        ("pil", [Image.new("RGB", (40, 30), (255, 0, 0))]),
        ("tensors", [torch.rand(3, 20, 20), torch.randint(0, 256, (3, 10, 30), dtype=torch.uint8),
                     torch.rand(1, 16, 16), torch.rand(16, 16)]),
        ("numpy", [np.zeros((12, 12, 3), dtype=np.uint8)]),
    ]
    path = tmp_path / "sub" / "grid.png"
    width, height = save_image_grid(rows, str(path), title="a grid")
    with Image.open(path) as png:
        assert png.size == (width, height)
        assert png.format == "PNG"
        assert width > height > 200  # 4 columns, 3 rows
    small = tmp_path / "palette.png"
    save_image_grid(rows, str(small), palette_colors=64)
    with Image.open(small) as png:
        assert png.mode == "P"


def test_save_image_grid_errors(tmp_path):
    with pytest.raises(DataError):
        save_image_grid([("empty", [])], str(tmp_path / "x.png"))
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(DataError):
        save_image_grid([("a", [torch.rand(3, 4, 4)])], str(blocker / "x.png"))


def test_aug_gallery_job_writes_one_labelled_grid(tmp_path, capsys):
    image = tmp_path / "in.png"
    array = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(array).save(image)
    output = tmp_path / "out" / "gallery.png"
    argv = ["--image", str(image), "--output", str(output), "--samples", "3", "--seed", "1"]
    assert run(aug_gallery.main, argv) == 0
    with Image.open(output) as png:
        width, height = png.size
    assert 400 < width < 1000  # label column + 3 cells of ~140 px
    assert 900 < height < 1400  # title + 8 rows of ~140 px
    assert "wrote" in capsys.readouterr().out


def test_aug_gallery_job_same_seed_same_png(tmp_path):
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    outputs = []
    for name in ("a.png", "b.png"):
        assert run(aug_gallery.main, ["--image", str(image), "--output", str(tmp_path / name), "--samples", "2"]) == 0
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]


def test_aug_gallery_job_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16)).save(good)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    cases = [
        ["--image", str(corrupt), "--output", str(tmp_path / "o.png")],
        ["--image", str(tmp_path / "missing.png"), "--output", str(tmp_path / "o.png")],
        ["--image", str(good), "--output", str(blocker / "o.png"), "--samples", "1"],
    ]
    for argv in cases:
        assert run(aug_gallery.main, argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()
