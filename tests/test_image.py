"""The decode policy on every kind of input the issue names (docs/FORMAT.md, 'RGB member')."""

import io

import numpy as np
import pytest
from PIL import Image

from shards.image import BadImage, prepare_image


def _photo(h=60, w=80):
    rng = np.random.default_rng(0)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def _encode(im: Image.Image, fmt_: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt_, **kw)
    return buf.getvalue()


def test_rgb_jpeg_kept_byte_for_byte():
    data = _encode(Image.fromarray(_photo()), "JPEG", quality=80)
    p = prepare_image(data)
    assert p.jpg is data and not p.reencoded and p.rgb.shape == (60, 80, 3)


def test_grayscale_jpeg_kept_and_labeled_as_rgb():
    data = _encode(Image.fromarray(_photo()[..., 0]), "JPEG")
    p = prepare_image(data)
    assert p.jpg is data and not p.reencoded
    assert p.rgb.shape == (60, 80, 3) and (p.rgb[..., 0] == p.rgb[..., 2]).all()


def test_cmyk_jpeg_reencoded():
    data = _encode(Image.fromarray(_photo()).convert("CMYK"), "JPEG")
    p = prepare_image(data)
    assert p.reencoded and p.reencode_reason == "mode CMYK"
    assert Image.open(io.BytesIO(p.jpg)).mode == "RGB" and Image.open(io.BytesIO(p.jpg)).format == "JPEG"


def test_png_named_jpeg_reencoded():
    p = prepare_image(_encode(Image.fromarray(_photo()), "PNG"))
    assert p.reencoded and p.reencode_reason == "format PNG"
    assert Image.open(io.BytesIO(p.jpg)).format == "JPEG"


def test_rgba_png_composited_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent black
    p = prepare_image(_encode(Image.fromarray(rgba), "PNG"))
    assert p.reencode_reason == "format PNG, mode RGBA"
    assert (p.rgb == 255).all()


def test_16bit_png_scaled_to_8bit():
    arr = np.full((8, 8), 65535, np.uint16)
    arr[0, 0] = 256
    p = prepare_image(_encode(Image.fromarray(arr), "PNG"))
    assert p.reencoded and "I;16" in p.reencode_reason
    assert p.rgb[1, 1, 0] == 255 and p.rgb[0, 0, 0] == 1


def test_palette_png():
    im = Image.fromarray(_photo()).convert("P")
    p = prepare_image(_encode(im, "PNG"))
    assert p.reencoded and p.rgb.shape == (60, 80, 3)


def test_exif_orientation_recorded_not_applied():
    im = Image.fromarray(_photo(40, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(im, "JPEG", exif=exif.tobytes())
    p = prepare_image(data)
    assert p.jpg is data and p.exif_orientation == 6
    assert (p.height, p.width) == (40, 100)  # stored grid, not rotated


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"not an image at all", "not a decodable image"),
        (_encode(Image.fromarray(_photo()), "JPEG")[:300], "decode failed"),
    ],
)
def test_bad_inputs(data, reason):
    with pytest.raises(BadImage, match=reason):
        prepare_image(data)


def test_decompression_bomb_guard_kept(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImage, match="decompression-bomb"):
        prepare_image(_encode(Image.fromarray(_photo()), "JPEG"))
