"""Mask PNGs: standard files every reader decodes, with a fast path for the layout we write."""

import io

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
