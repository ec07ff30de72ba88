"""Reading shards back: our reader, plus interop with webdataset, wids and ray.data."""

import json
import tarfile

import numpy as np
import pytest
import torch

from shards.image import prepare_image
from shards.pack import Labels, decode_png, pack_sample
from shards.reader import JointTransform, collate, decode_sample, make_dataset
from shards.synthetic import encode_jpeg
from shards.writer import ShardWriter


def _raw_samples(shard):
    out = {}
    with tarfile.open(shard) as tf:
        for ti in tf:
            key, ext = ti.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(ti).read()
    return out


def test_reader_roundtrip_identical_arrays(synthetic_ds):
    assert len(list(synthetic_ds.glob("*.parquet"))) == 3  # the shards' tables beside them change nothing
    raw = {}
    for i in range(3):
        raw.update(_raw_samples(synthetic_ds / f"syn-00000{i}.tar"))
    got = list(make_dataset(str(synthetic_ds), shuffle=0))
    assert sorted(s["__key__"] for s in got) == sorted(raw)
    for s in got:
        r = raw[s["__key__"]]
        assert s["image"].dtype == torch.uint8 and s["image"].shape[0] == 3
        assert (s["semantic"].numpy() == decode_png(r["sem.png"])).all()
        assert (s["instance"].numpy() == decode_png(r["inst.png"])).all()
        assert s["semantic"].dtype == torch.int64 and s["cls"] == int(r["cls"])
        assert s["meta"] == json.loads(r["json"])


def test_16bit_instance_ids_above_255_survive(tmp_path):
    h, w = 40, 30
    rgb = np.zeros((h, w, 3), np.uint8)
    inst = (np.arange(h * w, dtype=np.uint16).reshape(h, w) % 1000) + 1  # ids 1..1000
    sem = np.zeros((h, w), np.uint8)
    members = pack_sample("k", prepare_image(encode_jpeg(rgb)), Labels(sem, inst, []), "s")
    with ShardWriter(tmp_path / "x-000000.tar") as wr:
        wr.write("k", members)
    (s,) = list(make_dataset(str(tmp_path), shuffle=0))
    assert s["instance"].max().item() == 1000 and (s["instance"].numpy() == inst).all()


def test_file_url_and_shuffle(synthetic_ds):
    a = [s["__key__"] for s in make_dataset("file://" + str(synthetic_ds), shuffle=0)]
    b = [s["__key__"] for s in make_dataset(str(synthetic_ds / "syn-{000000..000002}.tar"), shuffle=8, seed=3)]
    assert len(a) == 12 and sorted(a) == sorted(b) and a != b


def test_workers_see_disjoint_shards(synthetic_ds):
    ds = make_dataset(str(synthetic_ds), shuffle=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    keys = [s["__key__"] for s in loader]
    assert len(keys) == 12 and len(set(keys)) == 12


def test_resampled_stream_is_infinite(synthetic_ds):
    ds = make_dataset(str(synthetic_ds), shuffle=0, resampled=True)
    it = iter(ds)
    keys = [next(it)["__key__"] for _ in range(40)]
    assert len(keys) == 40 and len(set(keys)) <= 12


def _block_image(tmp_path, seed=0):
    """An image whose masks are derived from its own pixels: 16x16-pixel blocks of 8 well-separated
    colours; semantic = colour index, instance = block number (ids above 255 included)."""
    rng = np.random.default_rng(seed)
    palette = np.array([[r, g, b] for r in (20, 235) for g in (20, 235) for b in (20, 235)], np.uint8)
    colour = rng.integers(0, 8, (20, 30))
    sem = np.kron(colour, np.ones((16, 16), np.int64)).astype(np.uint8)  # [320, 480]
    inst = np.kron(np.arange(1, 601).reshape(20, 30), np.ones((16, 16), np.int64)).astype(np.uint16)
    members = pack_sample("k", prepare_image(encode_jpeg(palette[sem])), Labels(sem, inst, []), "s")
    with ShardWriter(tmp_path / "b-000000.tar") as wr:
        wr.write("k", members)
    return palette


def test_joint_transform_keeps_masks_aligned(tmp_path):
    palette = _block_image(tmp_path)
    ds = make_dataset(str(tmp_path), transform=JointTransform(224, scale=(0.2, 1.0)), shuffle=0)
    torch.manual_seed(0)
    flipped = 0
    for trial in range(12):
        (s,) = list(ds)
        img = s["image"].permute(1, 2, 0).numpy().astype(np.int32)
        sem, inst = s["semantic"].numpy(), s["instance"].numpy()
        assert img.shape[:2] == sem.shape == inst.shape == (224, 224)
        assert set(np.unique(sem).tolist()) <= set(range(8))  # nearest: ids never blended
        nearest = np.abs(img[:, :, None, :] - palette[None, None].astype(np.int32)).sum(-1).argmin(-1)
        # edges blur (JPEG chroma, antialiased resize); misaligned by one block would give ~1/8
        assert (nearest == sem).mean() > 0.85, trial
        # each instance (a block) is one colour, so it holds exactly one class
        for i in np.unique(inst)[:50]:
            assert len(np.unique(sem[inst == i])) == 1
        flipped += int(inst[0, 0] > inst[0, -1])
    assert 0 < flipped < 12  # both flip outcomes were exercised


def test_collate_stacks(synthetic_ds):
    ds = make_dataset(str(synthetic_ds), transform=JointTransform(64), shuffle=0)
    batch = collate([s for _, s in zip(range(4), ds, strict=False)])
    assert batch["image"].shape == (4, 3, 64, 64) and batch["instance"].shape == (4, 64, 64)


def test_bad_sample_names_its_shard(tmp_path):
    with ShardWriter(tmp_path / "x-000000.tar") as wr:
        wr.write("k", {"jpg": b"garbage", "sem.png": b"x", "inst.png": b"x", "json": b"{}"})
    with pytest.raises(Exception) as ei:
        list(make_dataset(str(tmp_path), shuffle=0))
    assert "x-000000.tar" in str(ei.value) or "x-000000.tar" in repr(ei.value.args)


# --- interop: the same shards through the ecosystem's own readers ---------------------------


def test_webdataset_reads(synthetic_ds):
    assert len(list(synthetic_ds.glob("*.parquet"))) == 3  # the shards' tables beside them change nothing
    import webdataset as wds

    ds = wds.WebDataset(str(synthetic_ds / "syn-{000000..000002}.tar"), shardshuffle=False).decode(
        wds.handle_extension("sem.png", decode_png), wds.handle_extension("inst.png", decode_png), "rgb8"
    )
    got = list(ds)
    assert len(got) == 12 and got[0]["jpg"].shape[2] == 3 and got[0]["inst.png"].dtype == np.uint16


def test_wids_reads(synthetic_ds):
    assert len(list(synthetic_ds.glob("*.parquet"))) == 3  # the shards' tables beside them change nothing
    import wids

    ds = wids.ShardListDataset(
        str(synthetic_ds / "syn.wids.json"), cache_dir=str(synthetic_ds / "_cache"), transformations=[]
    )  # raw members: our own decoders
    assert len(ds) == 12
    s = ds[5]
    assert s["__key__"].endswith("scene_00000005")
    d = decode_sample({k.lstrip("."): (v.read() if hasattr(v, "read") else v) for k, v in s.items()})
    assert d["image"].shape[0] == 3 and d["semantic"].shape == d["instance"].shape


def test_ray_data_reads(synthetic_ds):
    assert len(list(synthetic_ds.glob("*.parquet"))) == 3  # the shards' tables beside them change nothing
    import ray

    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=1,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        ds = ray.data.read_webdataset(str(synthetic_ds), decoder=None, file_extensions=["tar"])
        rows = ds.take_all()
    finally:
        ray.shutdown()
    assert len(rows) == 12
    row = rows[0]
    assert decode_png(row["inst.png"]).ndim == 2 and bytes(row["jpg"][:2]) == b"\xff\xd8"


def test_reader_lists_and_reads_an_fsspec_directory(synthetic_ds):
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in synthetic_ds.glob("*.tar"):
        fs.pipe(f"/remote-shards/{p.name}", p.read_bytes())
    try:
        keys = sorted(s["__key__"] for s in make_dataset("memory://remote-shards", shuffle=0))
    finally:
        fs.rm("/remote-shards", recursive=True)
    assert keys == sorted(s["__key__"] for s in make_dataset(str(synthetic_ds), shuffle=0)) and len(keys) == 12


def test_ranks_and_workers_get_disjoint_shards_forever(monkeypatch):
    """DisjointShards: each (rank, worker) owns a fixed, disjoint subset; `repeat` cycles it with a
    new order each pass."""
    from shards.reader import DisjointShards

    urls = [f"s-{i:06d}.tar" for i in range(12)]
    owned = []
    for rank in range(2):
        for worker in range(3):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", "3")
            it = iter(DisjointShards(urls, seed=1, shuffle=True, repeat=True))
            passes = [[next(it)["url"] for _ in range(2)] for _ in range(4)]
            assert all(sorted(p) == sorted(passes[0]) for p in passes)  # same subset every pass
            owned.append(set(passes[0]))
    assert set().union(*owned) == set(urls) and sum(len(o) for o in owned) == 12
    monkeypatch.setenv("WORLD_SIZE", "20")
    monkeypatch.setenv("RANK", "19")  # 57 + worker: past the 12 shards
    with pytest.raises(ValueError, match="cannot be split over 20 ranks x 3 workers"):
        next(iter(DisjointShards(urls, seed=1, shuffle=True, repeat=True)))
