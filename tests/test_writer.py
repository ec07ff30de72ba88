import hashlib
import io
import json
import subprocess
import tarfile

import numpy as np
import pytest

from shards.format import FIXED_MTIME
from shards.image import prepare_image
from shards.pack import Instance, Labels, decode_png, encode_png, pack_sample
from shards.synthetic import encode_jpeg, make_scene, write_synthetic_dataset
from shards.writer import ShardWriter


def _members(seed=0):
    rgb, sem, inst, instances = make_scene(np.random.default_rng(seed), 48, 64)
    return pack_sample("k", prepare_image(encode_jpeg(rgb)), Labels(sem, inst, instances), "src/k.jpg", 3, "n0")


def test_png_roundtrip_keeps_16bit_ids():
    ids = np.arange(70000, dtype=np.uint32).reshape(280, 250) % 65536
    assert (decode_png(encode_png(ids.astype(np.uint16))) == ids).all()
    sem = np.array([[0, 254, 255]], np.uint8)
    out = decode_png(encode_png(sem))
    assert out.dtype == np.uint8 and (out == sem).all()


def test_roundtrip_bytes_identical(tmp_path):
    members = {k: _members(i) for i, k in enumerate(["a", "b", "c"])}
    with ShardWriter(tmp_path / "s-000000.tar") as w:
        for k, m in members.items():
            w.write(k, m)
    assert w.info.samples == 3
    data = (tmp_path / "s-000000.tar").read_bytes()
    assert w.info.bytes == len(data) and w.info.sha256 == hashlib.sha256(data).hexdigest()
    with tarfile.open(tmp_path / "s-000000.tar") as tf:
        names = tf.getnames()
        for k, m in members.items():
            for ext, payload in m.items():
                assert tf.extractfile(f"{k}.{ext}").read() == payload
    assert names == [f"{k}.{e}" for k in members for e in sorted(members[k])]


def test_same_input_gives_byte_identical_shards(tmp_path):
    write_synthetic_dataset(tmp_path / "a", 6, 3, seed=1)
    write_synthetic_dataset(tmp_path / "b", 6, 3, seed=1)
    for name in ("syn-000000.tar", "syn-000001.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_crash_leaves_no_partial_tar(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s-000000.tar") as w:
            w.write("a", _members())
            raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []


def test_keys_strictly_increasing_and_valid(tmp_path):
    with ShardWriter(tmp_path / "s-000000.tar") as w:
        w.write("b", _members())
        for bad in ("a", "b", "x.y", ""):
            with pytest.raises(ValueError):
                w.write(bad, _members())
        with pytest.raises(ValueError, match="missing"):
            w.write("c", {"jpg": b""})


def test_zero_samples_writes_no_file(tmp_path):
    with ShardWriter(tmp_path / "s-000000.tar") as w:
        pass
    assert w.info.samples == 0 and list(tmp_path.iterdir()) == []


def test_pack_rejects_misaligned_labels():
    rgb, sem, inst, instances = make_scene(np.random.default_rng(0), 48, 64)
    with pytest.raises(ValueError, match="differ from image"):
        pack_sample("k", prepare_image(encode_jpeg(rgb)), Labels(sem[:-1], inst, instances), "s")


def test_sample_json_contents():
    m = _members()
    meta = json.loads(m["json"])
    assert meta["width"] == 64 and meta["height"] == 48 and meta["class"] == {"index": 3, "synset": "n0"}
    ids = sorted(i["id"] for i in meta["instances"])
    assert ids == sorted(set(np.unique(decode_png(m["inst.png"])).tolist()) - {0})
    assert m["cls"] == b"3"


def test_instance_record_json():
    assert Instance(1, None, 0.91234, 10, [0, 1, 2, 3]).to_json() == {
        "id": 1,
        "category": None,
        "score": 0.9123,
        "area": 10,
        "bbox": [0, 1, 2, 3],
    }


def test_gnu_tar_reads_shards(synthetic_ds, tmp_path):
    shard = synthetic_ds / "syn-000000.tar"
    listing = subprocess.run(["tar", "tf", str(shard)], capture_output=True, text=True, check=True).stdout.split()
    assert len(listing) == 4 * 5 and listing[0] == "scene_00000000.cls"
    subprocess.run(["tar", "xf", str(shard), "-C", str(tmp_path)], check=True)
    with tarfile.open(shard) as tf:
        assert (tmp_path / "scene_00000000.jpg").read_bytes() == tf.extractfile("scene_00000000.jpg").read()
    assert io.BytesIO((tmp_path / "scene_00000000.inst.png").read_bytes()).read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("key", ["n01440764_10026", "ключ_0001", "k" * 150])  # ustar, pax (non-ASCII, long)
def test_tar_bytes_are_what_tarfile_writes(tmp_path, key):
    """The writer lays out headers, data and padding itself: byte for byte what tarfile.addfile and
    tarfile.close write, for plain ustar names and names that need a pax header."""
    samples = [
        (f"{key}{i}", {"jpg": bytes(range(256)) * (i + 1), "json": b"{}", "sem.png": b"x" * 511, "inst.png": b""})
        for i in range(3)
    ]
    path = tmp_path / "w.tar"
    with ShardWriter(path) as w:
        for k, members in samples:
            w.write(k, members)
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for k, members in samples:
            for ext in sorted(members):
                ti = tarfile.TarInfo(f"{k}.{ext}")
                ti.size, ti.mtime, ti.mode = len(members[ext]), FIXED_MTIME, 0o444
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                tf.addfile(ti, io.BytesIO(members[ext]))
    data = path.read_bytes()
    assert data == ref.getvalue()
    assert w.info.bytes == len(data) and w.info.sha256 == hashlib.sha256(data).hexdigest()


def test_member_headers_are_tarfiles():
    from shards.writer import member_header

    for name in ["a.jpg", "n" * 95 + ".json", "n" * 96 + ".json", "x" * 101, "é.jpg"]:  # 100 chars: ustar; 101: pax
        for size in [0, 1, 511, 512, 110_000, 8**11 - 1, 8**11]:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = size, FIXED_MTIME, 0o444
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            assert member_header(name, size) == ti.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
