"""The Ray-free parts of a style sweep: the fixed loss meter, a trial's GPU share, the contact
sheet and the Pareto front. Real PyTorch on the tiny random VGG-19 of test_stylizer, 32-48 px."""

from __future__ import annotations

import io
import itertools
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont
from test_stylizer import picture, stripes, tiny_vgg19

from cvray.errors import ConfigError
from cvray.images import to_tensor
from cvray.style.config import StyleConfig
from cvray.style.losses import content_loss, gram, normalize, style_loss, tv_loss
from cvray.style.presets import preset_config
from cvray.style.stylizer import Stylizer
from cvray.style.sweep import (
    BYTES_PER_PIXEL,
    GIB,
    VGG19_FLOATS_PER_PIXEL,
    contact_sheet_png,
    gpu_fraction_per_trial,
    loss_meter,
    pareto_front,
    pareto_png,
    swept_label,
    trial_memory_bytes,
    unweighted_losses,
)
from cvray.style.vgg import VGGTaps

LAB_CONTENT, LAB_STYLE = ("relu4_4",), StyleConfig().style_layers  # the lab's taps on a VGG-19 shape


@pytest.fixture(autouse=True)
def one_torch_thread():
    """32 px tensors gain nothing from intra-op threads, and on a busy machine OpenMP's waiting
    threads make them ~100x slower; restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- the loss meter


def test_losses_are_the_lab_terms_unweighted_whatever_the_trial_measured():
    features = tiny_vgg19(seed=1)
    content, image = picture(1, 32, 48)[None], picture(2, 32, 48)[None]
    trials = [
        StyleConfig(shape=(32, 48), content_layers=("relu3_1",), style_layers=("relu1_1", "relu2_1"),
                    style_layer_weights=(2.0, 0.5), content_weight=3.0, style_weight=1e5, tv_weight=0.0),
        preset_config("balanced", shape=(32, 48), lr=0.01, style_weight=40.0),
        StyleConfig(shape=(32, 48)),
    ]
    measured = [unweighted_losses(loss_meter(t, [stripes()], features=features), image, content)
                for t in trials]
    assert measured[0] == measured[1] == measured[2]  # one set of taps, weights 1: same numbers
    # by hand: the lab's per-layer MSEs summed over its layers, TV on the normalised image
    taps = VGGTaps(features, LAB_CONTENT + LAB_STYLE)
    with torch.no_grad():
        got, want = taps(normalize(image)), taps(normalize(content))
        style_feats = taps(normalize(to_tensor(stripes())[None]))  # 48 px long side: no resize
    expected_style = sum(style_loss(got[n], gram(style_feats[n])[0]).item() for n in LAB_STYLE)
    row = measured[0][0]
    assert row["content_loss"] == pytest.approx(content_loss(got["relu4_4"], want["relu4_4"]).item(), rel=1e-5)
    assert row["style_loss"] == pytest.approx(expected_style, rel=1e-5)
    assert row["tv_loss"] == pytest.approx(tv_loss(normalize(image)).item(), rel=1e-5)
    # the content image against itself: no content loss; (3, H, W) works too
    (own,) = unweighted_losses(loss_meter(trials[0], [stripes()], features=features), content[0], content[0])
    assert own["content_loss"] == 0.0 and own["style_loss"] > 0 and own["tv_loss"] > 0
    with pytest.raises(ConfigError, match="needs a loss meter"):  # a trial's stylizer weighs its terms
        unweighted_losses(Stylizer(trials[0], [stripes()], features=features), image, content)


def test_more_style_weight_buys_a_lower_measured_style_loss():
    """One short run of two trials (style weights 10 and 100, a trial content layer the meter
    does not use): measured on the lab's taps, the heavier style weight has less style loss and
    more content loss. A random tiny VGG needs style weights near 10 (see test_stylizer)."""
    features = tiny_vgg19(seed=1)
    trial = StyleConfig(iterations=20, shape=(32, 32), lr=0.05, content_layers=("relu3_1",))
    content = picture(3, 32, 32)[None].repeat(2, 1, 1, 1)
    result = Stylizer(trial, [stripes()], features=features).stylize(content, style_weights=[10.0, 100.0])
    light, heavy = unweighted_losses(loss_meter(trial, [stripes()], features=features), result.images, content)
    (start,) = unweighted_losses(loss_meter(trial, [stripes()], features=features), content[0], content[0])
    assert heavy["style_loss"] < 0.7 * light["style_loss"] and light["style_loss"] < start["style_loss"]
    assert heavy["content_loss"] > light["content_loss"] > 0


# ---------------------------------------------------------------- a trial's GPU share


def test_gpu_fraction_is_monotone_packs_evenly_and_knows_its_limits():
    assert VGG19_FLOATS_PER_PIXEL == 611 and BYTES_PER_PIXEL == 4 * (2 * 611 + 20)
    sizes = [(32, 32), (300, 450), (512, 512), (1024, 1024), (1536, 1536), (2048, 2048)]
    for gpu in (24.0, 80.0, 141.0):
        by_size = {}
        for (h, w), batch in itertools.product(sizes, (1, 2, 4)):
            try:
                frac = gpu_fraction_per_trial(h, w, batch, gpu)
            except ConfigError:
                frac = math.inf
            by_size[h, w, batch] = frac
            if frac == math.inf:
                assert trial_memory_bytes(h, w, batch) > gpu * GIB
                continue
            n = round(1 / frac)
            assert frac == 1 / n and 1 <= n <= 8  # n trials fill the GPU exactly
            assert frac * gpu * GIB >= trial_memory_bytes(h, w, batch)  # rounded up: it fits
            if n < 8:  # and the next smaller share would not
                assert gpu * GIB / (n + 1) < trial_memory_bytes(h, w, batch)
        for (h, w), batch in itertools.product(sizes, (1, 2, 4)):
            bigger = [by_size[h2, w2, batch] for h2, w2 in sizes if h2 * w2 > h * w]
            assert all(f >= by_size[h, w, batch] for f in bigger)  # monotone in size
            assert by_size[h, w, 1] <= by_size[h, w, 2] <= by_size[h, w, 4]  # and in batch
    assert gpu_fraction_per_trial(32, 32, 1, 80.0) == 1 / 8  # the floor: at most 8 per GPU
    assert gpu_fraction_per_trial(300, 450, 4, 80.0) == 1 / 8  # the lab's size
    assert gpu_fraction_per_trial(1024, 1024, 4, 80.0) == 1 / 4
    assert gpu_fraction_per_trial(2048, 2048, 2, 80.0) == 1 / 2
    assert gpu_fraction_per_trial(2048, 2048, 4, 80.0) == 1.0  # ~78 GiB: a whole GPU
    with pytest.raises(ConfigError, match=r"4 x 4096x4096 needs about 31\d\.\d GiB, more than a 80 GiB GPU"):
        gpu_fraction_per_trial(4096, 4096, 4, 80.0)
    with pytest.raises(ConfigError, match="batch >= 1"):
        gpu_fraction_per_trial(32, 32, 0, 80.0)


# ---------------------------------------------------------------- contact sheet


def flat(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


def test_contact_sheet_orders_scales_and_labels_the_tiles():
    tiles = [(flat(30, 60, RED), "sw=1e+03\ntv=1"), (Image.fromarray(flat(60, 60, GREEN)), "sw=10\ntv=1"),
             (flat(15, 45, BLUE), "sw=100\ntv=1")]
    png = contact_sheet_png(tiles, order_keys=[(1e3, 1), (10, 1), (100, 1)], columns=3)
    sheet = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    # green (first in order) sets the height: 60 px; blue 45x15 -> 180x60, red 60x30 -> 120x60
    font = ImageFont.load_default()
    label_h = 2 + 2 * (font.getbbox("Ag")[3] + 3)  # two label lines
    assert sheet.shape == (60 + label_h, 60 + 4 + 180 + 4 + 120, 3)
    for x0, w, rgb in ((0, 60, GREEN), (64, 180, BLUE), (248, 120, RED)):
        tile = sheet[:60, x0:x0 + w]
        assert np.abs(tile - np.array(rgb)).max() <= 2  # Lanczos keeps a flat colour
        band = sheet[60:, x0:x0 + w]
        assert band.min() < 128 and (band == 255).mean() > 0.5  # dark text on white
    # two rows of two: the cells keep their order, the second row starts below the first
    two_rows = np.asarray(Image.open(io.BytesIO(contact_sheet_png(
        tiles, order_keys=[3, 1, 2], columns=2, height=30))).convert("RGB")).astype(int)
    cell_h, green_w = 30 + label_h, math.ceil(font.getlength("sw=10")) + 4
    assert green_w > 30  # a label wider than its 30 px image widens the cell
    assert two_rows.shape[:2] == (2 * cell_h + 4, green_w + 4 + 90)
    assert np.abs(two_rows[15, 15] - GREEN).max() <= 2 and (two_rows[15, 31:green_w] == 255).all()
    assert np.abs(two_rows[15, green_w + 4 + 45] - BLUE).max() <= 2
    assert np.abs(two_rows[cell_h + 4 + 15, 30] - RED).max() <= 2
    with pytest.raises(ConfigError, match="2 order keys for 3 tiles"):
        contact_sheet_png(tiles, order_keys=[1, 2])


def test_swept_label_formats_numbers_and_layers():
    values = {"style_weight": 10000.0, "lr": 0.05, "style_layers": ("relu1_1", "relu2_1"), "iterations": 300}
    assert swept_label(values) == "style_weight=1e+04\nlr=0.05\nstyle_layers=relu1_1,relu2_1\niterations=300"
    assert swept_label(values, ["lr", "iterations"], sep=", ") == "lr=0.05, iterations=300"


# ---------------------------------------------------------------- Pareto front


def brute_force_front(points):
    def dominates(q, p):
        return q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1])
    ok = [i for i, p in enumerate(points) if all(map(math.isfinite, p))]
    return sorted((i for i in ok if not any(dominates(points[j], points[i]) for j in ok)),
                  key=lambda i: (points[i], i))


def test_pareto_front_dominated_duplicate_single_and_empty():
    points = [(1, 5), (2, 3), (2, 4), (3, 3), (4, 1), (2, 3), (5, 5), (math.nan, 0), (0.5, 10), (4, 1.5)]
    assert pareto_front(points) == [8, 0, 1, 5, 4]  # by content loss; both copies of (2, 3)
    assert pareto_front([(7.0, 7.0)]) == [0]
    assert pareto_front([]) == []
    assert pareto_front([(1, 2), (1, 1)]) == [1] and pareto_front([(2, 1), (1, 1)]) == [1]
    assert pareto_front([(3, 3), (3, 3), (3, 3)]) == [0, 1, 2]
    assert pareto_front([(math.inf, 0), (1, 1)]) == [1]
    rng = random.Random(0)
    for _ in range(200):  # many ties: coordinates from a small range
        pts = [(rng.randint(0, 5), rng.randint(0, 5)) for _ in range(rng.randint(1, 12))]
        assert pareto_front(pts) == brute_force_front(pts)


def test_pareto_png_is_a_png_with_log_and_linear_axes():
    rows = [{"content_loss": c, "style_loss": s, "style_weight": w, "tv_weight": 1.0}
            for c, s, w in [(0.1, 500.0, 1e2), (1.0, 20.0, 1e3), (3.0, 0.5, 1e4), (2.0, 30.0, 1e3),
                            (math.nan, 1.0, 1e6)]]
    for data in (rows, [r | {"style_loss": r["style_loss"] / 400 + 1} for r in rows[:4]]):
        png = pareto_png(data, label_keys=["style_weight", "tv_weight"], title="sweep")
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (600, 450)
        image.load()
