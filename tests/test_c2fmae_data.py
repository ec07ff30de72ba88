"""The trainer's data path: class-mixed batches, compact worker samples, crop geometry, resumable stream."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from c2fmae.data import (
    CROP_FIELDS,
    StreamConfig,
    TrainStream,
    TrainTransform,
    as_ids,
    decode_on_device,
    make_loader,
    prepare,
    to_device,
)
from pipelines.plan import make_plan
from shards.image import prepare_image
from shards.manifest import LabelerInfo, LabelSpace, ShardStats, write_dataset_files, write_stats
from shards.pack import Labels, pack_sample
from shards.reader import decode_sample, expand_urls, shard_samples
from shards.writer import ShardWriter

# --- class mixing -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory):
    """A 10-class ImageNet-style tree (`<wnid>/<wnid>_<i>.JPEG`), 40 small photos per class."""
    root = tmp_path_factory.mktemp("in10") / "train"
    rng = np.random.default_rng(0)
    for c in range(10):
        wnid = f"n{1440764 + c:08d}"
        (root / wnid).mkdir(parents=True)
        for i in range(40):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
            (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(buf.getvalue())
    return root


def write_shards(plan, out, shard_items) -> None:
    """Shards of `plan` with empty labels (the `empty` preset's maps), items per shard from `shard_items`."""
    out.mkdir()
    stats = []
    for index in range(plan.num_shards):
        name = plan.shard_name(index)
        with ShardWriter(out / name) as w:
            for it in shard_items(index):
                image = prepare_image((Path(plan.root) / it.source).read_bytes())
                h, w_ = image.height, image.width
                labels = Labels(np.full((h, w_), 255, np.uint8), np.zeros((h, w_), np.uint16))
                w.write(it.key, pack_sample(it.key, image, labels, it.source, it.class_index, it.synset))
        info = w.info
        s = ShardStats(index, name, info.samples, info.samples, info.bytes, info.sha256)
        write_stats(out, s)
        stats.append(s)
    write_dataset_files(out, LabelSpace(semantic={}), LabelerInfo("empty", empty_labels=True), plan.header(), stats)


def classes_per_batch(shards, interleave: int, batches: int = 12) -> float:
    cfg = StreamConfig(tuple(expand_urls(str(shards))), 32, batches, seed=0, img_size=32, cell_size=4)
    cfg = StreamConfig(**{**cfg.__dict__, "shuffle": 16, "interleave": interleave})
    stream = iter(TrainStream(cfg))
    counts = [len(set(next(stream)["cls"].tolist())) for _ in range(batches)]
    return sum(counts) / len(counts)


def test_batches_of_32_mix_classes_with_the_plan_order(imagenet_tree, tmp_path):
    """ImageNet's scale in miniature: 400 images, shards of 32, a shuffle buffer (16) smaller than a
    class (40). Shards in the plan's order hold random classes; the same shards cut in key order
    hold one or two classes each, which interleaving shards mixes only in part."""
    plan = make_plan(imagenet_tree, 32)
    assert plan.imagenet and plan.num_shards == 13 and plan.header().order_seed == 0
    for i in range(plan.num_shards):
        keys = [it.key for it in plan.shard_items(i)]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)  # the ShardWriter's rule
    assert sorted(it.key for i in range(13) for it in plan.shard_items(i)) == [it.key for it in plan.items]

    mixed, keyed = tmp_path / "plan-order", tmp_path / "key-order"
    write_shards(plan, mixed, plan.shard_items)
    write_shards(plan, keyed, lambda i: plan.items[i * 32 : (i + 1) * 32])
    in_plan_order = classes_per_batch(mixed, interleave=4)
    alone, interleaved = classes_per_batch(keyed, interleave=1), classes_per_batch(keyed, interleave=4)
    print(
        f"classes per batch of 32: plan order {in_plan_order:.2f}; key order {alone:.2f}, interleaved {interleaved:.2f}"
    )
    assert in_plan_order >= 6.0
    assert alone < interleaved < in_plan_order and alone <= 4.5


# --- compact samples and crops -------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from shards.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("scenes")
    write_synthetic_dataset(out, 24, 4, seed=3, size=(375, 500))
    return out


def _cfg(scenes, **kw) -> StreamConfig:
    base = dict(urls=tuple(expand_urls(str(scenes))), batch_size=4, batches_per_epoch=5, seed=1, shuffle=8)
    return StreamConfig(**{**base, **kw})


def test_workers_send_compact_batches(scenes):
    """uint8 image, uint8/int16 cell labels, a bool boundary map: under 200 KB per sample at 224."""
    batch = next(iter(TrainStream(_cfg(scenes))))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, 224, 224)
    assert batch["sem_cells"].dtype == torch.uint8 and batch["sem_cells"].shape == (4, 56, 56)
    assert batch["inst_cells"].dtype == torch.int16 and batch["inst_edge"].dtype == torch.bool
    assert batch["crop"].dtype == torch.int32 and batch["crop"].shape == (4, len(CROP_FIELDS))
    assert len(batch["key"]) == 4 and all(k.startswith("scene_") for k in batch["key"])
    nbytes = sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))
    assert nbytes / 4 < 200_000, nbytes / 4


def test_crop_geometry_reproduces_the_sample(scenes):
    """The batch says which part of which stored image each sample is: re-cropping it gives the same pixels."""
    import torchvision.transforms.v2.functional as F

    batch = next(iter(TrainStream(_cfg(scenes))))
    raw = {s["__key__"]: s for url in expand_urls(str(scenes)) for s in shard_samples(url)}
    for i, key in enumerate(batch["key"]):
        top, left, h, w, flipped, height, width = batch["crop"][i].tolist()
        img = decode_sample(raw[key], masks=False)["image"]
        assert img.shape[1:] == (height, width)
        again = F.resized_crop(img, top, left, h, w, [224, 224], interpolation=F.InterpolationMode.BICUBIC)
        assert torch.equal(again.flip(-1) if flipped else again, batch["image"][i])


def test_device_side_targets_agree_with_the_maps(scenes):
    """prepare() on the compact batch: normalised floats, semantic cells that match the stored map at
    the cell centres, instance channels with the boundary from the worker, patch modes."""
    batch = next(iter(TrainStream(_cfg(scenes, augment=False))))
    for target, channels in (("centre", 5), ("local", 4)):
        b = prepare(batch, cells_per_patch=4, instance_target=target)
        assert b["image"].dtype == torch.float32 and abs(float(b["image"].mean())) < 3
        inst = b["inst_cells"]
        assert inst.shape == (4, channels, 56, 56) and torch.equal(inst[:, 1].bool(), batch["inst_edge"])
        assert torch.equal(inst[:, 0].bool(), as_ids(batch["inst_cells"]) > 0)
        assert b["sem_patch"].shape == b["inst_patch"].shape == (4, 196) and b["sem_patch"].max() <= 5
    assert b["inst_cells"][:, 2:].sum() > 0  # the scenes have instances: affinities here, offsets above


def test_decoding_on_the_device_gives_the_workers_crops(scenes):
    """`--decode gpu` on a CPU machine (device="cpu"): the workers send the JPEG bytes, the same
    boxes and the same maps; the device decodes in one batched call and crops with the same code,
    so the images are the CPU path's, pixel for pixel, views included."""
    for views in (1, 2):
        cpu = next(iter(TrainStream(_cfg(scenes, views=views))))
        gpu = next(iter(TrainStream(_cfg(scenes, views=views, decode="gpu"))))
        assert "image" not in gpu and gpu["jpeg"].dtype == torch.uint8 and len(gpu["jpeg_sizes"]) == 4
        assert gpu["source"] == [i for _ in range(views) for i in range(4)] and len(gpu["box"]) == 4 * views
        for k in ("sem_cells", "inst_cells", "inst_edge", "crop", "cls"):
            assert torch.equal(cpu[k], gpu[k]), k
        assert cpu["key"] == gpu["key"]
        decoded = decode_on_device(to_device(gpu, torch.device("cpu")), torch.device("cpu"), 224)
        assert torch.equal(decoded["image"], cpu["image"])
        a, b = prepare(cpu, 4), prepare(decoded, 4)
        assert all(torch.equal(a[k], b[k]) for k in ("image", "sem_cells", "inst_cells", "sem_patch", "crop"))
    nbytes = gpu["jpeg"].numel() / 4 + sum(
        v.numel() * v.element_size() / 8 for k, v in gpu.items() if isinstance(v, torch.Tensor) and k != "jpeg"
    )
    assert nbytes < 150_000, nbytes  # the JPEG instead of 150 KB of pixels


def test_two_views_are_two_crops_of_each_image(scenes):
    """FOLK's views: all first views, then all second views; the first views are the one-view stream's."""
    one = next(iter(TrainStream(_cfg(scenes))))
    two = next(iter(TrainStream(_cfg(scenes, views=2))))
    assert two["image"].shape == (8, 3, 224, 224) and two["key"] == one["key"] * 2
    assert torch.equal(two["image"][:4], one["image"]) and torch.equal(two["crop"][:4], one["crop"])
    assert not torch.equal(two["crop"][:4], two["crop"][4:])  # other boxes
    assert torch.equal(two["crop"][:4, 5:], two["crop"][4:, 5:])  # of the same images


def test_smir_rows_travel_with_the_batch(scenes):
    """SMIR's rounds: each sample's row in the round's table, from the workers (no lookup on the host)."""
    keys = sorted({k for b in (next(iter(TrainStream(_cfg(scenes)))),) for k in b["key"]})
    rows = {k: i for i, k in enumerate(keys[:2])}
    batch = next(iter(TrainStream(_cfg(scenes, rows=rows, blank_row=7))))
    want = [rows.get(k, 7) for k in batch["key"]]
    assert batch["row"].tolist() == want and prepare(batch, 4)["row"].tolist() == want


def test_uint16_maps_travel_as_their_bits():
    t = TrainTransform(32, 4)
    sem = np.full((40, 40), 65535, np.uint16)
    sem[:20] = 300
    inst = np.zeros((40, 40), np.uint16)
    inst[10:30, 10:30] = 40000
    img = torch.zeros(3, 40, 40, dtype=torch.uint8)
    s = t({"image": img, "semantic": sem, "instance": inst, "cls": 1, "__key__": "k"}, __import__("random").Random(0))
    assert s["sem_cells"].dtype == torch.int16 and set(as_ids(s["sem_cells"]).unique().tolist()) <= {300, 65535}
    assert 40000 in as_ids(s["inst_cells"]).unique().tolist()


# --- the stream ------------------------------------------------------------------------------------


def _keys(loader, n):
    it = iter(loader)
    return [(tuple(b["key"]), b["crop"].sum().item()) for b in (next(it) for _ in range(n))]


def test_resumed_stream_equals_the_straight_one_with_worker_processes(scenes):
    """Batch g always comes from virtual worker g mod W: a loader started at batch 7 (mid-epoch 2,
    on worker 1 of 2) yields exactly the batches 7.. of a loader started at 0, crops included."""
    straight = _keys(make_loader(_cfg(scenes), workers=2), 12)
    resumed = _keys(make_loader(_cfg(scenes, start_batch=7), workers=2), 5)
    assert resumed == straight[7:12]
    assert len({k for keys, _ in straight for k in keys}) > 12  # not one batch repeated


def test_epochs_reshuffle_and_seeds_differ(scenes):
    a = _keys(TrainStream(_cfg(scenes)), 10)
    b = _keys(TrainStream(_cfg(scenes, seed=2)), 10)
    assert a != b and a[:5] != a[5:]


def test_one_persistent_loader(scenes):
    loader = make_loader(_cfg(scenes), workers=1)
    assert loader.persistent_workers and loader.num_workers == 1


def test_gpu_decode_workers_name_a_bad_sample_as_the_cpu_path_does(monkeypatch):
    """`decode_maps` (the `--decode gpu` workers) refuses what `decode_sample` refuses, with the
    sample's shard and key in one line, also for an error without a message."""
    import shards.png
    from c2fmae.data import decode_maps
    from shards import format as fmt
    from shards.reader import SampleError

    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, "JPEG")
    labels = Labels(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint16))
    sample = pack_sample("k0", prepare_image(jpeg.getvalue()), labels, "a/k0.JPEG", 3, "n0")
    raw = {"__url__": "s/c2f-000000.tar", "__key__": "k0", **sample}
    assert decode_maps(raw)["size"] == (8, 8)
    for bad, why in ((b"x1", "is not a class index"), (b"", "is not a class index")):
        for decode in (decode_maps, decode_sample):
            with pytest.raises(SampleError, match=f"s/c2f-000000.tar key k0: ValueError: .cls .* {why}"):
                decode({**raw, fmt.CLS: bad})
    monkeypatch.setattr(shards.png, "check_pixels", lambda *a: (_ for _ in ()).throw(ValueError()))
    with pytest.raises(SampleError, match=r"^s/c2f-000000.tar key k0: ValueError"):
        decode_maps(raw)
