"""The decode stage against hostile inputs (issue classes 1-4): every failure on one input is a
quarantine record with its stage and reason, and costs no other input of its shard."""

import io
import os
import signal
import time

import hostile
import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, JpegImagePlugin

from pipelines.plan import Item
from pipelines.worker import DecodeLimits, InputRefused, Quarantine, ShardJob, decode_batches, read_input
from shards.image import BadImage, prepare_image


def run_decode(root, names, limits=None, batch_size=16):
    """decode_batches over files in `root`: ({name: reason}, {name: stage}, [decoded names], stamps)."""
    items = [Item(n.replace(".", "_"), n) for n in names]
    job = ShardJob(0, "t-000000.tar", items, str(root), str(root), batch_size, limits or DecodeLimits())
    q, stamps = Quarantine(job.shard), {}
    ok = [it.source for batch in decode_batches(job, q, stamps) for it, _ in batch]
    return {r.source: r.reason for r in q}, {r.source: r.stage for r in q}, ok, stamps


def write(root, files):
    for name, data in files.items():
        (root / name).write_bytes(data)
    return list(files)


# --- class 1: one bad input never costs its shard ------------------------------------------------


def test_plugin_exceptions_of_any_type_quarantine_only_their_input(tmp_path):
    good = hostile.jpeg()
    names = write(
        tmp_path,
        {
            "a_good.jpg": good,
            "b_tiff_ascii_offsets.tif": hostile.tiff_strip_offsets_typed(2),  # Pillow raises TypeError
            "c_tiff_long8_offsets.tif": hostile.tiff_strip_offset_overflow(),  # ... OverflowError
            "d_png_text_bomb.png": hostile.png_text_bomb(),  # ... ValueError (MAX_TEXT_CHUNK)
            "e_good.jpg": hostile.jpeg(seed=1),
        },
    )
    reasons, stages, ok, _ = run_decode(tmp_path, names, batch_size=2)
    assert ok == ["a_good.jpg", "e_good.jpg"]
    assert set(stages.values()) == {"decode"}
    assert reasons["b_tiff_ascii_offsets.tif"].startswith("decode failed: TypeError: ")
    assert reasons["c_tiff_long8_offsets.tif"].startswith("decode failed: OverflowError: ")
    assert reasons["d_png_text_bomb.png"] == (
        "decode failed: ValueError: Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK"
    )


@pytest.mark.parametrize("exc", [MemoryError, RuntimeError("plugin state"), NotImplementedError("mode")])
def test_errors_no_real_file_can_be_made_for_still_cost_one_input(tmp_path, monkeypatch, exc):
    """MemoryError (and the RuntimeError/NotImplementedError some plugins raise) cannot be made
    with a small file; the JPEG plugin's load is made to raise them for one marked input."""
    marked = hostile.jpeg(seed=7)
    original = JpegImagePlugin.JpegImageFile.load

    def load(self):
        if self.fp is not None and self.fp.getvalue() == marked:
            raise exc
        return original(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    names = write(tmp_path, {"a.jpg": hostile.jpeg(), "b.jpg": marked, "c.jpg": hostile.jpeg(seed=2)})
    reasons, _, ok, _ = run_decode(tmp_path, names)
    assert ok == ["a.jpg", "c.jpg"]
    name = exc.__name__ if isinstance(exc, type) else type(exc).__name__
    assert reasons["b.jpg"].startswith(f"decode failed: {name}")


@pytest.mark.parametrize(
    "data",
    [
        hostile.exif_jpeg(9),  # orientation out of 1..8
        hostile.exif_jpeg(65535),
        hostile.exif_jpeg(raw_exif=b"Exif\0\0MM\0*\0\0\0\x08\xff\xff" + b"\x01" * 40),  # a broken IFD
    ],
    ids=["orientation-9", "orientation-65535", "garbage-ifd"],
)
def test_bad_exif_is_metadata_lost_not_an_image_lost(data):
    p = prepare_image(data)
    assert p.jpg is data and not p.reencoded and p.exif_orientation is None and p.rgb.shape == (60, 80, 3)


def test_valid_exif_orientation_still_recorded():
    assert prepare_image(hostile.exif_jpeg(6)).exif_orientation == 6


# --- class 2: the size a header declares is checked before anything is decoded ------------------------


@pytest.mark.parametrize(
    "data, declared",
    [
        (hostile.jpeg_declaring(9000, 9000), "JPEG declares 9000x9000 = 81.0 MP"),
        (hostile.png_declaring(12000, 6000), "PNG declares 12000x6000 = 72.0 MP"),
        (hostile.gif_declaring(8000, 8000), "GIF declares 8000x8000 = 64.0 MP"),
    ],
    ids=["jpeg", "png", "gif"],
)
def test_declared_size_over_the_budget_is_refused_from_the_header(data, declared):
    assert len(data) < 2000
    t0 = time.perf_counter()
    with pytest.raises(BadImage) as e:
        prepare_image(data)  # default budget: 50 MP
    assert str(e.value) == f"too large: {declared}, over the 50000000-pixel limit"
    assert time.perf_counter() - t0 < 0.5  # nothing was decoded


def test_max_pixels_budget_is_the_flag_and_beyond_pillows_guard_the_guard_answers(tmp_path):
    names = write(tmp_path, {"small.jpg": hostile.jpeg(60, 80), "big.jpg": hostile.jpeg(100, 100)})
    reasons, stages, ok, _ = run_decode(tmp_path, names, DecodeLimits(max_pixels=60 * 80))
    assert ok == ["small.jpg"] and stages == {"big.jpg": "decode"}
    assert reasons["big.jpg"] == "too large: JPEG declares 100x100 = 0.0 MP, over the 4800-pixel limit"
    with pytest.raises(BadImage, match=r"decompression-bomb guard"):
        prepare_image(hostile.png_declaring(20000, 20000))  # 400 MP: Pillow refuses in open()


# --- class 3: only image formats are decoded -----------------------------------------------------------


@pytest.mark.parametrize(
    "data, fmt",
    [
        (hostile.EPS, "EPS"),
        (hostile.psd(), "PSD"),
        (hostile.ico(), "ICO"),
        (hostile.encode(hostile.photo(), "SGI"), "SGI"),
    ],
    ids=["eps", "psd", "ico", "sgi"],
)
def test_formats_outside_the_allowlist_are_refused_by_name(data, fmt, monkeypatch):
    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a))  # must never run
    with pytest.raises(BadImage) as e:
        prepare_image(data)
    assert str(e.value).startswith(f"format {fmt} refused (by its magic number; c2f decodes JPEG, PNG, WEBP, BMP")
    assert not ran


@pytest.mark.parametrize("fmt_", ["PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_allowed_formats_still_decode(fmt_):
    p = prepare_image(hostile.encode(hostile.photo(), fmt_))
    assert p.reencoded and p.reencode_reason.startswith(f"format {fmt_}") and p.rgb.shape == (60, 80, 3)


def test_html_error_page_named_jpeg_is_not_an_image():
    with pytest.raises(BadImage, match="^not a decodable image$"):
        prepare_image(b"<html><body>403 Forbidden</body></html>")


# --- class 4: only regular files are read, and only so much ----------------------------------------------


def test_fifo_is_refused_at_once_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    signal.alarm(10)  # a blocking open would hang here: fail instead
    try:
        with pytest.raises(InputRefused, match=r"^not a regular file \(FIFO\)$"):
            read_input(str(tmp_path), "pipe.jpg")
    finally:
        signal.alarm(0)


def test_symlink_to_a_device_is_refused_not_read(tmp_path):
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    with pytest.raises(InputRefused, match=r"^not a regular file \(character device\)$"):
        read_input(str(tmp_path), "zero.jpg")


def test_reads_are_bounded_by_max_input_bytes(tmp_path):
    with open(tmp_path / "huge.jpg", "wb") as f:
        f.truncate(200 << 20)  # a sparse 200 MB file: costs nothing on disk
    names = write(tmp_path, {"ok.jpg": hostile.jpeg()}) + ["huge.jpg"]
    reasons, stages, ok, stamps = run_decode(tmp_path, names)
    assert ok == ["ok.jpg"] and stages == {"huge.jpg": "read"}
    assert reasons["huge.jpg"] == f"file of {200 << 20} bytes exceeds --max-input-bytes {64 << 20}"
    st = (tmp_path / "ok.jpg").stat()
    assert stamps["ok_jpg"] == [st.st_size, st.st_mtime_ns]  # what was read, for the resume check


def test_a_missing_input_is_a_read_record_with_its_stamp_as_planned(tmp_path):
    job = ShardJob(0, "t-000000.tar", [Item("gone", "gone.jpg", size=5, mtime_ns=7)], str(tmp_path), str(tmp_path))
    q, stamps = Quarantine(job.shard), {}
    assert [b for b in decode_batches(job, q, stamps)] == [[]]
    assert q[0].stage == "read" and q[0].reason.startswith("FileNotFoundError: ")
    assert stamps == {"gone": [5, 7]}


def test_decoded_pixels_match_pillow():
    data = hostile.jpeg(33, 47, seed=3)
    p = prepare_image(data)
    assert np.array_equal(p.rgb, np.asarray(Image.open(io.BytesIO(data))))


def test_remote_inputs_are_bounded_too():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/c2f-in/ok.jpg", hostile.jpeg())
    fs.pipe("/c2f-in/big.jpg", b"\0" * 5000)
    fs.mkdir("/c2f-in/dir.jpg")
    try:
        data, stamp = read_input("memory://c2f-in", "ok.jpg", max_bytes=4096)
        assert data == hostile.jpeg() and stamp[0] == len(data)
        with pytest.raises(InputRefused, match="object of 5000 bytes exceeds --max-input-bytes 4096"):
            read_input("memory://c2f-in", "big.jpg", max_bytes=4096)
        with pytest.raises(InputRefused, match=r"not a file \(directory\)"):
            read_input("memory://c2f-in", "dir.jpg", max_bytes=4096)
    finally:
        fs.rm("/c2f-in", recursive=True)
