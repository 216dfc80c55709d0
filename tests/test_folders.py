"""Folders, output naming, the manifest and image decoding for the bulk job (no Ray)."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cvray.style.bulk_plan import min_side, processing_size
from cvray.config import StyleConfig, StylizeFolderConfig
from cvray import folders
from cvray.images import decode_image_at, encode_image
from cvray.errors import ConfigError, DataError


def _png(size=(40, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


def _write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ------------------------------------------------------------------ listing and names


def test_list_files_is_recursive_sorted_and_skips_hidden_and_symlinked_dirs(tmp_path):
    root = tmp_path / "in"
    for rel in ("b.png", "a/c.jpg", "a/deep/d.gif", ".hidden.png", ".cache/x.png", "a/.e.png"):
        _write(root / rel, _png())
    outside = tmp_path / "outside"
    _write(outside / "z.png", _png())
    os.symlink(outside, root / "link")
    entries = folders.list_files(folders.open_folder(str(root)))
    assert [e.rel for e in entries] == ["a/c.jpg", "a/deep/d.gif", "b.png"]
    assert all(e.size == len(_png()) for e in entries)


def test_list_files_refuses_missing_folder_and_plain_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        folders.list_files(folders.open_folder(str(tmp_path / "nope")))
    _write(tmp_path / "f.png", _png())
    with pytest.raises(DataError, match="not a folder"):
        folders.list_files(folders.open_folder(str(tmp_path / "f.png")))


@pytest.mark.parametrize("rel, expected", [
    ("a/b.jpg", ("a/b.jpg", "JPEG")), ("X.JPEG", ("X.JPEG", "JPEG")), ("p.png", ("p.png", "PNG")),
    ("w.webp", ("w.webp", "WEBP")), ("b.BMP", ("b.BMP", "BMP")), ("t.tif", ("t.tif", "TIFF")),
    ("d/t.tiff", ("d/t.tiff", "TIFF")), ("g/anim.gif", ("g/anim.png", "PNG")),
])
def test_output_name_keeps_format_except_gif(rel, expected):
    assert folders.output_name(rel) == expected


@pytest.mark.parametrize("rel", ["notes.txt", "README", "a/../../etc/x.png", "/abs.png", "a//b.png",
                                 "./a.png", "_cvray/x.png", "a\\..\\b.png"])
def test_output_name_refuses_non_images_and_unsafe_paths(rel):
    with pytest.raises(DataError):
        folders.output_name(rel)


def test_nested_folders_are_refused_both_ways(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "in" / "out"
    inp.mkdir()
    open_ = folders.open_folder
    with pytest.raises(ConfigError, match="inside the input"):
        folders.check_not_nested(open_(str(inp)), open_(str(out)))
    with pytest.raises(ConfigError, match="inside --output"):
        folders.check_not_nested(open_(str(out)), open_(str(inp)))
    with pytest.raises(ConfigError, match="is the input"):
        folders.check_not_nested(open_(str(inp)), open_(str(inp) + "/"))
    os.symlink(inp, tmp_path / "alias")  # the same folder under another name
    with pytest.raises(ConfigError, match="inside the input"):
        folders.check_not_nested(open_(str(tmp_path / "alias")), open_(str(out)))
    folders.check_not_nested(open_(str(inp)), open_(str(tmp_path / "in2")))  # a sibling is fine
    with pytest.raises(ConfigError):
        folders.check_not_nested(open_("s3://b/photos?region=us-east-1"), open_("s3://b/photos/out?region=us-east-1"))
    folders.check_not_nested(open_("s3://b/photos?region=us-east-1"), open_("s3://b/photos-out?region=us-east-1"))


def test_write_file_is_atomic_and_never_follows_a_symlink_out(tmp_path):
    out = folders.open_folder(str(tmp_path / "out"))
    folders.write_file(out, out.path_of("a/b.png"), b"data")
    assert (tmp_path / "out/a/b.png").read_bytes() == b"data"
    assert os.listdir(tmp_path / "out/a") == ["b.png"]  # no temporary file left behind
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out/trap")
    with pytest.raises(DataError, match="outside the output folder"):
        folders.write_file(out, out.path_of("trap/x.png"), b"data")
    assert os.listdir(tmp_path / "elsewhere") == []


# ------------------------------------------------------------------ manifest


def test_manifest_parts_merge_and_retry_replaces(tmp_path):
    out = folders.open_folder(str(tmp_path / "out"))
    now = folders.now_utc()
    folders.write_manifest_part(out, {"relpath": "a.png", "status": "failed", "error": "x", "run_id": "r1",
                                      "finished_at": now})
    folders.write_manifest_part(out, {"relpath": "b.png", "status": "done", "loss_curve": [3.0, 2.0],
                                      "run_id": "r1", "finished_at": now})
    records, parts = folders.read_manifest_state(out)
    assert sorted(records) == ["a.png", "b.png"] and len(parts) == 2
    folders.write_manifest(out, list(records.values()), parts)
    assert not os.listdir(tmp_path / "out/_cvray/parts")
    folders.write_manifest_part(out, {"relpath": "a.png", "status": "done", "run_id": "r2",
                                      "finished_at": folders.now_utc()})  # the retry of a.png
    records, parts = folders.read_manifest_state(out)
    assert records["a.png"]["status"] == "done" and records["b.png"]["loss_curve"] == [3.0, 2.0]
    folders.write_manifest(out, list(records.values()), parts)
    table = pq.read_table(tmp_path / "out/_cvray/manifest.parquet")
    assert table.column("relpath").to_pylist() == ["a.png", "b.png"]
    assert table.column("run_id").to_pylist() == ["r2", "r1"]
    assert (tmp_path / "out/_cvray/manifest.csv").read_text().startswith('"relpath","input"')


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    out = folders.open_folder(str(tmp_path / "out"))
    _write(tmp_path / "out/_cvray/manifest.parquet", b"garbage")
    with pytest.raises(DataError, match="cannot read the manifest"):
        folders.read_manifest_state(out)


# ------------------------------------------------------------------ sizes and decoding


def test_processing_size_and_minimum():
    lab = StyleConfig()
    assert processing_size(lab.replace(size=48), 64, 32) == (24, 48)  # (H, W), long side 48
    assert processing_size(lab.replace(size=48), 30, 20) == (20, 30)  # never upscaled
    assert processing_size(lab.replace(size=None), 999, 5) == (5, 999)
    assert processing_size(lab.replace(shape=(20, 30)), 64, 64) == (20, 30)
    assert min_side(lab) == 16  # conv5_1 comes after 4 max-pools
    assert min_side(lab.replace(style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_2",))) == 2
    assert min_side(lab.replace(style_layers=("pool5",))) == 32


def test_processing_size_matches_the_stylizer():
    torch = pytest.importorskip("torch")
    from cvray.style.stylizer import Stylizer

    layers, channels = [], 3
    for convs in (1, 1, 1, 2, 1):  # a narrow VGG with the lab's layer names up to conv5_1
        for _ in range(convs):
            layers += [torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(inplace=True)]
            channels = 4
        layers.append(torch.nn.MaxPool2d(2))
    tiny = torch.nn.Sequential(*layers[:-1])
    style = Image.new("RGB", (32, 32), (0, 0, 255))
    for config in (StyleConfig(size=48), StyleConfig(size=None), StyleConfig(shape=(20, 30))):
        config = config.replace(style_layers=("relu1_1", "conv5_1"), content_layers=("relu4_2",))
        stylizer = Stylizer(config, [style], features=tiny)
        for w, h in [(64, 32), (33, 100), (48, 48), (10, 7), (1000, 3), (47, 49)]:
            assert processing_size(config, w, h) == stylizer.output_size(w, h)


def _sizer(long_side):
    def size_for(w, h):
        s = min(1.0, long_side / max(w, h))
        return max(1, round(h * s)), max(1, round(w * s))
    return size_for


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kw)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "1", "LA"])
def test_decode_image_at_any_mode_gives_rgb_at_the_size(mode):
    if mode == "I;16":
        img = Image.fromarray((np.arange(64 * 40).reshape(40, 64) * 25).astype(np.uint16))
    else:
        img = Image.new(mode, (64, 40))
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    out, upright = decode_image_at(_encoded(img, fmt), _sizer(48))
    assert out.mode == "RGB" and out.size == (48, 30) and upright == (64, 40)


def test_decode_image_at_applies_exif_orientation_and_draft():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    img = Image.new("RGB", (64, 32), (200, 10, 10))
    out, upright = decode_image_at(_encoded(img, "JPEG", exif=exif.tobytes()), _sizer(48))
    assert upright == (32, 64) and out.size == (24, 48)
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), np.uint8))
    out, upright = decode_image_at(_encoded(big, "JPEG"), _sizer(100))
    assert upright == (1600, 1200) and out.size == (100, 75)


def test_decode_image_at_refuses_bad_data_and_checks_size_before_decoding():
    good = _encoded(Image.new("RGB", (64, 40)), "PNG")
    for data, reason in [(b"", "empty"), (b"not an image", "unrecognised"),
                         (good[: len(good) // 2], "not a readable image")]:
        with pytest.raises(DataError, match=reason):
            decode_image_at(data, _sizer(48))
    calls = []

    def too_small(w, h):
        calls.append((w, h))
        raise DataError("too small")
    with pytest.raises(DataError, match="too small"):
        decode_image_at(_encoded(Image.new("RGB", (8, 8)), "PNG"), too_small)
    assert calls == [(8, 8)]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_encode_image_round_trips_each_output_format(fmt):
    img = Image.new("RGB", (20, 10), (10, 200, 30))
    back = Image.open(io.BytesIO(encode_image(img, fmt)))
    assert back.format == fmt and back.size == (20, 10) and back.convert("RGB").mode == "RGB"


def test_folder_config_round_trips_with_nested_style():
    config = StylizeFolderConfig(style=StyleConfig(size=48, iterations=2), input="in", output="out",
                                 style_images=("s.png",), num_actors=2, use_gpu=False)
    again = StylizeFolderConfig.from_dict(config.to_dict())
    assert again == config and isinstance(again.style, StyleConfig)
