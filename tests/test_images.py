"""Image decoding and encoding shared by every job (no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cvray.errors import DataError
from cvray.images import WRITE_FORMATS, decode_image_at, encode_image, format_for


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




def test_format_for_knows_every_written_suffix_in_any_case():
    assert format_for("out/a.JPG") == "JPEG" and format_for("s3://b/x.tiff") == "TIFF"
    assert format_for("a.gif") is None and format_for("noext") is None
    assert set(WRITE_FORMATS.values()) == {"JPEG", "PNG", "WEBP", "BMP", "TIFF"}
