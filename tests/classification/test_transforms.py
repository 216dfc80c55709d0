"""The crop presets against torchvision's transforms, image by image; mixed sizes never mix pixels."""

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from cvray.classification.augment import sample_crop_boxes
from cvray.classification.transforms import RRC_RATIO, RRC_SCALE, CropEval, CropTrain, eval_transform, to_unit_float
from cvray.errors import DataError
from cvray.images import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def photo(h, w, seed):
    """A smooth uint8 (3, h, w) image (gradients plus noise), like a downscaled photo."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, h).view(h, 1)
    xs = torch.linspace(0, 1, w).view(1, w)
    base = torch.stack([ys * 200 + 20 * xs, xs * 180 + 30 + 0 * ys, (ys + xs) * 90 + 10])  # (3, h, w)
    noise = torch.randint(-20, 21, (3, h, w), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8)


def test_eval_is_the_labs_resize_then_centre_crop_per_image():
    images = [photo(70, 50, 1), photo(45, 90, 2), photo(64, 64, 3)]
    ours = CropEval(32, "imagenet")(images)  # R = round(32 * 256 / 224) = 37
    for image, out in zip(images, ours, strict=True):
        # torchvision's tensor resize (antialiased bilinear, uint8 out): the same up to rounding.
        theirs = TF.center_crop(TF.resize(image, [37, 37], antialias=True), [32, 32]).float()
        levels = (out * STD + MEAN) * 255  # back to 0..255
        torch.testing.assert_close(levels, theirs, rtol=0, atol=1.001)
        # PIL (the lab's transforms) differs by rounding and filter edges only: a level or two.
        pil = TF.center_crop(TF.resize(TF.to_pil_image(image), [37, 37]), [32, 32])
        diff = (TF.pil_to_tensor(pil).float() / 255 - (out * STD + MEAN)).abs()
        assert diff.mean().item() < 2 / 255


def test_train_crops_are_torchvisions_resized_crop_of_the_boxes_it_draws():
    images = [photo(80, 60, 4), photo(50, 100, 5), photo(40, 40, 6), photo(120, 70, 7)]
    ours = CropTrain(24, "none")(images, torch.Generator().manual_seed(3))
    # The same draws, replayed: boxes for the batch, then flips, from the same generator.
    g = torch.Generator().manual_seed(3)
    heights = torch.tensor([im.shape[1] for im in images])
    widths = torch.tensor([im.shape[2] for im in images])
    boxes = sample_crop_boxes(len(images), heights, widths, RRC_SCALE, RRC_RATIO, g, "cpu").tolist()
    flips = (torch.rand(len(images), generator=g) < 0.5).tolist()
    for image, box, flip, out in zip(images, boxes, flips, ours, strict=True):
        top, left, h, w = box
        assert 0 <= top and top + h <= image.shape[1] and 0 <= left and left + w <= image.shape[2]
        theirs = TF.resized_crop(image, top, left, h, w, [24, 24], antialias=True)
        theirs = theirs.flip(-1) if flip else theirs
        torch.testing.assert_close(out * 255, theirs.float(), rtol=0, atol=1.001)  # rounding apart


def test_train_is_reproducible_per_generator_and_random_across_batches():
    images = [photo(60, 80, i) for i in range(8)]
    first = CropTrain(16, "imagenet")(images, torch.Generator().manual_seed(0))
    again = CropTrain(16, "imagenet")(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    one, two = CropTrain(16, "imagenet")(images, g), CropTrain(16, "imagenet")(images, g)
    assert not torch.equal(one, two)
    assert one.shape == (8, 3, 16, 16) and one.dtype == torch.float32


@pytest.mark.parametrize("transform", [CropTrain(20, "none"), CropEval(20, "none")], ids=["train", "eval"])
def test_mixed_sizes_keep_each_images_own_pixels(transform):
    """Flat images of different sizes and colours: every output is exactly its own colour (no
    padding or neighbour bleeds into a crop, whatever the box)."""
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (128, 128, 128)]
    shapes = [(90, 30), (25, 120), (21, 21), (200, 160)]
    images = [torch.tensor(c, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).contiguous()
              for c, (h, w) in zip(colours, shapes, strict=True)]
    out = transform(images, torch.Generator().manual_seed(1))
    for colour, x in zip(colours, out, strict=True):
        torch.testing.assert_close(x, torch.tensor(colour).float().view(3, 1, 1).expand_as(x) / 255, rtol=0, atol=0)


def test_a_dense_batch_is_treated_as_its_images():
    dense = torch.stack([photo(48, 48, i) for i in range(4)])
    torch.testing.assert_close(CropEval(32, "imagenet")(dense), CropEval(32, "imagenet")(list(dense)))
    torch.testing.assert_close(CropTrain(32, "none")(dense, torch.Generator().manual_seed(2)),
                               CropTrain(32, "none")(list(dense), torch.Generator().manual_seed(2)))


def test_the_cifar_preset_needs_one_size():
    same = [photo(32, 32, i) for i in range(3)]
    torch.testing.assert_close(to_unit_float(same), torch.stack(same).float() / 255)
    with pytest.raises(DataError, match="one size"):
        to_unit_float([photo(32, 32, 0), photo(40, 32, 1)])
    with pytest.raises(DataError, match="one size"):
        eval_transform("cifar")([photo(32, 32, 0), photo(32, 30, 1)])


def test_eval_matches_pil_on_a_real_jpeg_roundtrip(tmp_path):
    """An image written and read back as JPEG, through PIL's Resize + CenterCrop (the lab's eval)
    and through CropEval: within a level on average."""
    path = tmp_path / "x.jpg"
    TF.to_pil_image(photo(300, 420, 9)).save(path, quality=90)
    pil = Image.open(path).convert("RGB")
    lab = TF.pil_to_tensor(TF.center_crop(TF.resize(pil, [256, 256]), [224, 224])).float() / 255
    ours = CropEval(224, "none")([TF.pil_to_tensor(pil)])[0]
    assert (lab - ours).abs().mean().item() < 1 / 255
