"""Mask PNGs: standard files every reader decodes, with a fast path for the layout we write."""

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_png as libpng_decode

from shards.pack import decode_png
from shards.png import decode_mask_fast, encode_mask
from shards.synthetic import make_scene


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_every_reader_agrees(dtype):
    _, sem, inst, _ = make_scene(np.random.default_rng(0), 97, 131)
    arr = (inst.astype(np.uint32) * 7919 % 65536).astype(dtype) if dtype == np.uint16 else sem
    data = encode_mask(arr)
    assert (decode_mask_fast(data) == arr).all()
    pil = np.asarray(Image.open(io.BytesIO(data)))
    assert pil.shape == arr.shape and (pil.astype(np.int64) == arr).all()
    lib = libpng_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8))[0].numpy()
    assert (lib.astype(np.int64) == arr).all()


def test_other_pngs_take_the_full_decoder():
    arr = np.tile(np.arange(200, dtype=np.uint8), (50, 1))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=9)  # PIL's adaptive row filters
    assert decode_mask_fast(buf.getvalue()) is None
    assert (decode_png(buf.getvalue()) == arr).all()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    assert decode_mask_fast(buf.getvalue()) is None  # colour: not a map
    with pytest.raises(ValueError, match="single-channel"):
        decode_png(buf.getvalue())


def test_corrupt_data_is_an_error_not_a_wrong_map():
    data = bytearray(encode_mask(np.full((20, 30), 3, np.uint8)))
    idat = data.index(b"IDAT")
    data[idat + 6 : idat + 10] = b"\xff\xff\xff\xff"
    with pytest.raises(ValueError):
        decode_mask_fast(bytes(data))


def test_bad_input_rejected():
    with pytest.raises(ValueError):
        encode_mask(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError):
        encode_mask(np.zeros((2, 2), np.int32))


def test_header_is_read_before_anything_is_inflated():
    from shards.png import check_pixels, png_header

    data = encode_mask(np.zeros((30, 20), np.uint16))
    hdr = png_header(data)
    assert (hdr.width, hdr.height, hdr.depth, hdr.color, hdr.interlace) == (20, 30, 16, 0, 0)
    assert png_header(b"GIF89a") is None
    with pytest.raises(ValueError, match="without an IHDR"):
        png_header(data[:8] + b"\0\0\0\x0dIDAT" + data[16:])
    with pytest.raises(ValueError, match="declares 20x30 = 0.0 MP, over the 0.0005 MP limit"):
        decode_mask_fast(data, max_pixels=500)
    with pytest.raises(ValueError, match="degenerate size 0x5"):
        check_pixels(0, 5, 100)


def test_inflating_stops_at_what_the_header_declares():
    """A map whose data inflates past its IHDR is refused without inflating the rest."""
    import zlib

    from shards.png import SIGNATURE, _chunk

    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    too_much = zlib.compress(b"\0" * (5 * 4 + 10_000_000))
    data = SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", too_much) + _chunk(b"IEND", b"")
    with pytest.raises(ValueError, match="inflates past the 20 bytes its IHDR declares"):
        decode_mask_fast(data)
    short = zlib.compress(b"\0" * 15)
    data = SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", short) + _chunk(b"IEND", b"")
    with pytest.raises(ValueError, match="holds 15 bytes, 4 rows of 5 expected"):
        decode_mask_fast(data)


def test_big_endian_view_is_the_same_map():
    arr = (np.arange(35 * 17, dtype=np.uint32).reshape(35, 17) * 997 % 65536).astype(np.uint16)
    be = decode_mask_fast(encode_mask(arr), native=False)
    assert be.dtype.byteorder == ">" and (be == arr).all()


@pytest.mark.parametrize(("dtype", "value"), [(np.uint8, 255), (np.uint16, 0), (np.uint16, 4097)])
def test_constant_views_encode_to_the_same_bytes_as_full_maps(dtype, value):
    for shape in [(375, 500), (1, 1), (3, 700)]:
        view = np.broadcast_to(dtype(value), shape)
        data = encode_mask(view)
        assert data == encode_mask(np.full(shape, value, dtype))
        assert encode_mask(view) is data  # served from the cache
        assert np.array_equal(decode_mask_fast(data), view)
