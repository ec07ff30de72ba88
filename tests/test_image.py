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


@pytest.mark.parametrize(
    "make",
    [
        lambda: _encode(Image.fromarray(_photo()), "JPEG", quality=80),  # stored as is, checked scaled
        lambda: _encode(Image.fromarray(_photo(5, 3)[..., 0]), "JPEG"),  # grayscale, smaller than 8 px
        lambda: _encode(Image.fromarray(_photo()).convert("CMYK"), "JPEG"),  # re-encoded
        lambda: _encode(Image.fromarray(_photo()).convert("RGBA"), "PNG"),  # re-encoded
    ],
)
def test_without_pixels_everything_but_the_array_is_the_same(make):
    data = make()
    full, checked = prepare_image(data), prepare_image(data, pixels=False)
    assert checked.rgb is None and full.rgb.shape == (full.height, full.width, 3)
    assert (checked.jpg, checked.reencoded, checked.reencode_reason, checked.exif_orientation) == (
        full.jpg,
        full.reencoded,
        full.reencode_reason,
        full.exif_orientation,
    )
    assert (checked.width, checked.height) == (full.width, full.height)
    placeholder = checked.labeler_input()
    assert placeholder.shape == full.rgb.shape and placeholder.dtype == np.uint8 and placeholder.strides == (0, 0, 0)


def test_checking_without_pixels_fails_exactly_when_a_full_decode_fails():
    """`pixels=False` decodes stored-as-is JPEGs with 1/8 DCT scaling: on truncated, corrupted and
    cut JPEGs (baseline, progressive, grayscale) it must quarantine exactly what the full decode does."""
    import hostile

    def fails(data: bytes, pixels: bool) -> bool:
        try:
            prepare_image(data, pixels=pixels)
            return False
        except BadImage:
            return True

    photo = Image.fromarray(_photo(96, 128))
    bases = [
        _encode(photo, "JPEG", quality=90),
        _encode(photo, "JPEG", progressive=True),
        _encode(photo.convert("L"), "JPEG", quality=75),
    ]
    failed = 0
    for d in hostile.damaged_copies(bases, 300, seed=1):
        full = fails(d, True)
        assert fails(d, False) == full, d[:64]
        failed += full
    assert 100 < failed < 300  # the cases exercised both outcomes
