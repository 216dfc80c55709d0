"""Folders: listing, safe output names, nesting checks, atomic writes (no Ray)."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from cvray import folders
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
