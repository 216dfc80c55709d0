"""The style engine: the lab's losses, batched == one-by-one, parity with the lab's loop,
and the optimisation doing what it should. Tiny narrow VGG-19s, 32-64 px, a few iterations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from benchmarks import lab_style
from cvray.errors import ConfigError
from cvray.images import to_pil, to_tensor
from cvray.style.config import StyleConfig
from cvray.style.losses import content_loss, denormalize, keep_original_colors, normalize
from cvray.style.presets import preset_config
from cvray.style.stylizer import Stylizer
from cvray.style.vgg import VGGTaps

LAB_LAYERS = dict(content_layers=("relu4_4",))  # what a VGG-19-shaped net's defaults resolve to


def tiny_vgg19(seed: int = 0, width: int = 8) -> torch.nn.Sequential:
    """VGG-19's layer structure (same indices and names) with `width`-times fewer channels."""
    torch.manual_seed(seed)
    cfg = [c if c == "M" else max(4, c // width) for c in torchvision.models.vgg.cfgs["E"]]
    features = torchvision.models.vgg.make_layers(cfg)
    for layer in features:
        if isinstance(layer, torch.nn.Conv2d):  # activations of order 1, as in a trained VGG
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            torch.nn.init.zeros_(layer.bias)
    return features.eval().requires_grad_(False)


def picture(seed: int, h: int = 32, w: int = 48) -> torch.Tensor:
    """A smooth random picture (3, H, W) in [0, 1]: blobs, not white noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]


def stripes(h: int = 48, w: int = 48) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    band = ((x + y) // 4 % 2).astype(np.float32)
    rgb = np.stack([band, 0.3 + 0.4 * band, 1 - band], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


# ---------------------------------------------------------------- batching and lab parity


def noise_images(n: int, seed: int, h: int = 32, w: int = 48) -> torch.Tensor:
    """Float noise pictures: no two neighbouring pixels tie, so no loss kink sits exactly at
    the start (see test_batched_equals_one_by_one)."""
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_batched_gradients_are_the_solo_gradients():
    stylizer = Stylizer(StyleConfig(shape=(32, 48), **LAB_LAYERS), [stripes()], features=tiny_vgg19())
    contents, images = noise_images(3, 0), noise_images(3, 1)

    def gradient(batch, content):
        batch = batch.clone().requires_grad_(True)
        stylizer.evaluate(batch, content)["total"].sum().backward()
        return batch.grad

    batched = gradient(images, contents)
    scale = batched.abs().max().item()
    for i in range(3):  # float rounding of batched vs single convolutions only
        torch.testing.assert_close(batched[i:i + 1], gradient(images[i:i + 1], contents[i:i + 1]),
                                   rtol=1e-4, atol=1e-5 * scale)


def test_batched_equals_one_by_one():
    """fp32, same settings: each image of a batch ends where it ends alone.

    Exact in real arithmetic; in floats only while no step lands within rounding error of a
    kink of the loss (ReLU, max-pool, |.| in TV), after which Adam's sign-like steps let the
    two trajectories drift apart, as any 1e-7 change of the input does (docs/style.md).
    A few steps from float-noise pictures stay clear of kinks.
    """
    features = tiny_vgg19(seed=1)
    config = StyleConfig(iterations=6, shape=(32, 48), precision="fp32", **LAB_LAYERS)
    stylizer = Stylizer(config, [stripes()], features=features)
    contents = noise_images(3, seed=1)
    batched = stylizer.stylize(contents)
    assert batched.images.shape == (3, 3, 32, 48) and batched.images.dtype == torch.float32
    assert set(batched.losses) == {"content", "style", "tv", "total"}
    assert batched.losses["total"].shape == (3, 6) and batched.losses["total"].dtype == np.float64
    for i in range(3):
        solo = stylizer.stylize(contents[i:i + 1])
        assert (solo.images[0] - batched.images[i]).abs().max().item() < 1e-4
        np.testing.assert_allclose(solo.losses["total"][0], batched.losses["total"][i], rtol=1e-5)
    assert (batched.images[0] - batched.images[1]).abs().max() > 0.1  # really different images


def test_noise_init_seeds_per_image_and_per_image_style_weights():
    config = StyleConfig(iterations=3, shape=(32, 32), init="noise", seed=5, **LAB_LAYERS)
    stylizer = Stylizer(config, [stripes()], features=tiny_vgg19())
    contents = noise_images(2, seed=2, h=32, w=32)
    batched = stylizer.stylize(contents, style_weights=[1e3, 1e5])  # image i: seed 5 + i
    for i, (seed, weight) in enumerate([(5, 1e3), (6, 1e5)]):
        solo = Stylizer(config.replace(seed=seed, style_weight=weight), [stripes()],
                        features=tiny_vgg19()).stylize(contents[i:i + 1])
        assert (solo.images[0] - batched.images[i]).abs().max().item() < 1e-4
        np.testing.assert_allclose(solo.losses["total"][0], batched.losses["total"][i], rtol=1e-5)
    again = stylizer.stylize(contents.flip(0), seed=[6, 5], style_weights=[1e5, 1e3])
    torch.testing.assert_close(again.images.flip(0), batched.images, atol=1e-4, rtol=0)
    other_seed = stylizer.stylize(contents, seed=50)
    assert (other_seed.images - batched.images).abs().max() > 0.1


def test_engine_reproduces_the_lab_loop():
    """Same network, same inputs: cvray's defaults give the lab's image and logged losses."""
    features = tiny_vgg19(seed=2)
    style_img = stripes(32, 48)
    content = noise_images(1, seed=7)[0]
    stylizer = Stylizer(StyleConfig(iterations=10, shape=(32, 48), **LAB_LAYERS), [style_img],
                        features=features)
    ours = stylizer.stylize(content.unsqueeze(0))
    lab_x, lab_log = lab_style.lab_stylize(
        lab_style.lab_net(features), normalize(content.unsqueeze(0)),
        normalize(to_tensor(style_img).unsqueeze(0)), num_epochs=10)
    assert (denormalize(lab_x).clamp(0, 1)[0] - ours.images[0]).abs().max().item() < 1e-4
    lab_content, lab_style_sum, lab_tv = lab_log[0]  # logged after epoch 10, before its step
    assert ours.losses["content"][0, 9] == pytest.approx(lab_content, rel=1e-4)
    assert ours.losses["style"][0, 9] == pytest.approx(10 * lab_style_sum, rel=1e-4)  # the x10
    assert ours.losses["tv"][0, 9] == pytest.approx(lab_tv, rel=1e-4)


def test_style_loss_falls_content_stays_close_and_the_weight_sets_the_balance():
    """Two copies of one content, style weights 10 and 100, one batch (lr 0.05, 40 steps).

    A random tiny VGG needs a style weight near 10 where a trained one takes the lab's 1e4:
    its Gram losses are ~1e3 times smaller relative to its content loss.
    """
    features = tiny_vgg19(seed=1)
    config = StyleConfig(iterations=40, shape=(48, 48), lr=0.05, content_layers=("relu3_1",))
    stylizer = Stylizer(config, [stripes()], features=features)
    content = picture(3, 48, 48).unsqueeze(0)
    result = stylizer.stylize(content.repeat(2, 1, 1, 1), style_weights=[10.0, 100.0])
    raw_style = result.losses["style"] / np.array([[10.0], [100.0]])
    assert (raw_style[:, -1] < 0.9 * raw_style[:, 0]).all()
    assert (raw_style[:, -10:].mean(axis=1) < raw_style[:, :10].mean(axis=1)).all()
    assert (result.losses["content"][:, 0] == 0.0).all()  # the lab starts from the content image
    # the result's content loss against that of unrelated pictures, measured the same way
    taps = VGGTaps(features, ["relu3_1"])
    with torch.no_grad():
        target = taps(normalize(content))["relu3_1"]
        final = [content_loss(taps(normalize(img[None]))["relu3_1"], target).item()
                 for img in result.images]
        unrelated = [content_loss(taps(normalize(img[None]))["relu3_1"], target).item()
                     for img in (picture(99, 48, 48), torch.full((3, 48, 48), 0.5))]
    assert final[0] < 0.25 * min(unrelated)
    # a larger style weight buys a lower style loss with a larger content loss
    assert raw_style[1, -1] < 0.5 * raw_style[0, -1]
    assert final[1] > 2 * final[0]


# ---------------------------------------------------------------- inputs, options, presets


def test_output_size_shape_long_side_and_never_upscaled():
    sized, shaped = StyleConfig(size=64, **LAB_LAYERS), StyleConfig(shape=(30, 45), **LAB_LAYERS)
    assert sized.output_size(width=200, height=100) == (32, 64)
    assert sized.output_size(width=100, height=300) == (64, 21)
    assert sized.output_size(width=40, height=30) == (30, 40)  # smaller than size: kept
    assert shaped.output_size(width=1000, height=1000) == (30, 45)
    stylizer = Stylizer(sized, [stripes()], features=tiny_vgg19())
    assert stylizer.prepare_content(to_pil(picture(1, 40, 80))).shape == (3, 32, 64)


def test_style_blend_averages_the_grams():
    features = tiny_vgg19()
    other = to_pil(picture(5, 48, 48))
    grams = [Stylizer(StyleConfig(**LAB_LAYERS), [img], features=features).style_grams(32, 32)
             for img in (stripes(), other)]
    blended = Stylizer(StyleConfig(style_blend=(1.0, 3.0), **LAB_LAYERS), [stripes(), other],
                       features=features).style_grams(32, 32)
    for name in blended:
        torch.testing.assert_close(blended[name], 0.25 * grams[0][name] + 0.75 * grams[1][name])
    with pytest.raises(ConfigError, match="3 weights for 2 style images"):
        Stylizer(StyleConfig(style_blend=(1.0, 1.0, 1.0)), [stripes(), other], features=features)


def test_original_colors_keep_content_chroma():
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    content = 0.3 + 0.4 * picture(1).unsqueeze(0)  # mid-range: no clamping
    result = 0.3 + 0.4 * picture(2).unsqueeze(0)
    mixed = keep_original_colors(result, content)
    to_yiq = lambda x: torch.einsum("ij,bjhw->bihw", yiq, x)  # noqa: E731
    torch.testing.assert_close(to_yiq(mixed)[:, 0], to_yiq(result)[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(to_yiq(mixed)[:, 1:], to_yiq(content)[:, 1:], atol=1e-5, rtol=0)
    config = StyleConfig(iterations=3, shape=(32, 48), original_colors=True, **LAB_LAYERS)
    out = Stylizer(config, [stripes()], features=tiny_vgg19()).stylize(content)
    assert (to_yiq(out.images)[:, 1:] - to_yiq(content)[:, 1:]).abs().max() < 0.02


def test_normalized_losses_do_not_depend_on_activation_scale():
    """Scaling the first conv by k scales every activation by k (ReLU and max-pool are
    positively homogeneous): the lab's style loss grows by k**4, the normalised one not at all."""
    content = picture(4).unsqueeze(0)
    results = {}
    for k in (1.0, 20.0):
        features = tiny_vgg19(seed=3)
        features[0].weight.mul_(k)
        for normalized in (False, True):
            config = StyleConfig(iterations=4, shape=(32, 48), normalized_losses=normalized,
                                 **LAB_LAYERS)
            results[k, normalized] = Stylizer(config, [stripes()], features=features).stylize(content)
    lab_ratio = results[20.0, False].losses["style"][0, 0] / results[1.0, False].losses["style"][0, 0]
    assert lab_ratio == pytest.approx(20.0**4, rel=1e-3)
    for name in ("content", "style", "total"):
        np.testing.assert_allclose(results[20.0, True].losses[name], results[1.0, True].losses[name],
                                   rtol=1e-3, atol=1e-6)


def test_callback_gets_intermediate_images():
    seen = []
    config = StyleConfig(iterations=6, shape=(32, 32), **LAB_LAYERS)
    stylizer = Stylizer(config, [stripes()], features=tiny_vgg19())
    result = stylizer.stylize(picture(1, 32, 32)[None].repeat(2, 1, 1, 1),
                              callback=lambda i, imgs: seen.append((i, imgs.clone())), callback_every=3)
    assert [i for i, _ in seen] == [3, 6]
    assert seen[0][1].shape == (2, 3, 32, 32) and 0 <= seen[0][1].min() and seen[0][1].max() <= 1
    torch.testing.assert_close(seen[-1][1], result.images)


def test_presets_and_config_errors():
    assert preset_config("lab") == StyleConfig()
    balanced = preset_config("balanced", style_weight=7.0)
    assert balanced.preset == "balanced" and balanced.style_weight == 7.0
    assert balanced.normalized_losses
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("nope")
    features = tiny_vgg19()
    with pytest.raises(ConfigError, match="2 style layer weights for 5"):
        Stylizer(StyleConfig(style_layer_weights=(1.0, 2.0)), [stripes()], features=features)
    with pytest.raises(ConfigError, match="at least one style image"):
        Stylizer(StyleConfig(), [], features=features)
    with pytest.raises(ConfigError, match="relu4_4"):  # unknown layer: the valid ones are listed
        Stylizer(StyleConfig(content_layers=("relu6_1",)), [stripes()], features=features)


def test_too_small_images_are_a_clear_error():
    stylizer = Stylizer(StyleConfig(iterations=1, **LAB_LAYERS), [stripes()], features=tiny_vgg19())
    assert stylizer.taps.min_side == 16  # conv5_1 comes after 4 max-pools
    with pytest.raises(ConfigError, match="content 12x40 is too small for layer conv5_1.*16 px"):
        stylizer.stylize(torch.rand(1, 3, 12, 40))
    assert stylizer.stylize(torch.rand(1, 3, 16, 40)).images.shape == (1, 3, 16, 40)
