"""The GPU code path, run and counted on a CPU (`--code-path gpu`, shards/opcount.py).

What CUDA would launch and where it would wait is counted on the exact calls the GPU path makes; the
guards here are the targets docs/BENCHMARKS.md records (bench/bench_dispatch.py prints the figures):
post-processing <= 100 ops per image whatever the image size (+-10% from 375x500 to 750x1000) and no
host sync before the batch's one download; SAM's syncs per batch independent of the prompts. The GPU
path must give the CPU path's maps.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labeler.config import LabelerConfig, SamConfig, Settings
from labeler.postprocess import RULES, PanopticParams, panoptic, semantic_from_logits, semantic_from_queries
from labeler.registry import build_labeler
from labeler.tiny import synthetic_query_logits, synthetic_semantic_logits
from shards.opcount import OpCounter, count_batch

SIZES = [(375, 500), (500, 375), (333, 500), (400, 400)]


def _images(n):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        small = torch.from_numpy(rng.integers(0, 256, (3, h // 16, w // 16)).astype(np.float32))[None]
        smooth = F.interpolate(small, (h, w), mode="bilinear", align_corners=False)[0]  # blobs, not noise
        out.append(np.ascontiguousarray(smooth.permute(1, 2, 0).round().clamp(0, 255).byte().numpy()))
    return out


def test_counter_sees_what_makes_cuda_wait():
    """Each kind of sync is seen on device tensors, none on host tensors or on the sync-free forms."""
    from labeler.postprocess import count_ids

    x = torch.arange(12.0)  # exists before counting: a device tensor
    with OpCounter() as counter:
        x.nonzero()
        torch.bincount(x.long())
        x[x > 3]
        float(x.sum())
        x.cpu()
        torch.tensor([1, 2], device="cpu")  # host data to a device, blocking
        x.tolist()
        host = torch.arange(5)  # host
        host.sum().item(), host.nonzero(), torch.bincount(host)  # host work: no device sync
        count_ids(x.long(), 12)  # known size: no sync
        torch.arange(3, device="cpu") + x[:3]  # built on the device
        uploaded = host.to("cpu", non_blocking=True)  # an asynchronous upload
        uploaded + x[:5]
        x[:5] + host  # a host tensor meeting a device tensor
    syncs = counter.counts.syncs["other"]
    assert dict(syncs) == {
        "nonzero": 1,
        "bincount": 1,
        "boolean index": 1,
        "item": 1,
        "device->host copy": 2,
        "host-built tensor to device": 1,
    }
    assert counter.counts.uploads["other"] == 1 and counter.counts.mixed["other"] == 1
    assert counter.counts.ops["other"] > 10


@pytest.fixture(scope="module")
def labelers():
    """preset -> {code path: labeler}, tiny models through the production loaders."""
    out = {}
    for preset in ("tiny-random-panoptic", "tiny-random-eomt", "tiny-random"):
        out[preset] = {
            path: build_labeler(Settings(LabelerConfig(preset=preset, device="cpu", code_path=path)))
            for path in ("cpu", "gpu")
        }
    return out


@pytest.mark.parametrize("preset", ["tiny-random-panoptic", "tiny-random-eomt", "tiny-random"])
def test_gpu_path_gives_the_cpu_paths_maps(labelers, preset):
    images = _images(4)
    cpu, gpu = (labelers[preset][p].label(images) for p in ("cpu", "gpu"))
    for a, b in zip(cpu, gpu, strict=True):
        assert np.array_equal(a.semantic, b.semantic) and np.array_equal(a.instance, b.instance)
        # SAM's GPU path runs SDPA attention: predicted IoUs (the scores) move in the last float bits.
        assert [(r.id, r.category, r.area, r.bbox, round(r.score, 5)) for r in a.instances] == [
            (r.id, r.category, r.area, r.bbox, round(r.score, 5)) for r in b.instances
        ]
    assert sum(len(x.instances) for x in cpu) >= 4


@pytest.mark.parametrize("preset", ["tiny-random-panoptic", "tiny-random-eomt"])
def test_panoptic_presets_wait_once_per_batch(labelers, preset):
    labeler = labelers[preset]["gpu"]
    images = _images(4)
    labeler.label(images)  # warm the geometry caches, as every batch after the first finds them
    counts = count_batch(labeler, images)
    assert counts.ops["postprocess"] / len(images) <= 100, counts.by_op["postprocess"]
    assert counts.sync_total("postprocess") == 0, counts.syncs["postprocess"]
    # Outside the model's forward (transformers' code), the batch's only wait is its one download.
    outside = {s: dict(counts.syncs[s]) for s in counts.syncs if s != "forward" and counts.syncs[s]}
    assert outside == {"download": {"device->host copy": 1}}, outside
    assert sum(counts.mixed.values()) == 0


def test_cpu_layout_is_what_the_counter_catches(labelers):
    """The counter is not blind: the CPU layout compacts with host syncs, which it reports."""
    counts = count_batch(labelers["tiny-random-panoptic"]["cpu"], _images(2))
    assert counts.syncs["postprocess"]["nonzero"] >= 2


def _count(fn, n):
    from labeler.postprocess import clear_geometry_cache

    clear_geometry_cache()  # every geometry new: the launches of a first sight of each image size
    with OpCounter() as counter, counter.phase("postprocess"):
        for i in range(n):
            fn(i)
    return counter.counts.ops["postprocess"] / n, counter.counts.sync_total()


def test_production_shapes_launch_a_fixed_number_of_ops_per_image(monkeypatch):
    """Mask2Former Swin-L and EoMT-L (200 queries, 150 classes), SegFormer (150 class maps), at ImageNet
    sizes and at twice them: <= 100 ops per image, the same count at both sizes, no sync. A tenth of the
    queries and classes against a tenth of the memory budget per pass are chunked exactly as the
    production shapes are (the op count depends on the chunks, not on their length), in a tenth of the time."""
    import labeler.postprocess as pp

    monkeypatch.setattr(pp, "GPU_CHUNK", pp.GPU_CHUNK // 10)
    params = PanopticParams(0.8, 0.5, 0.8, 255)
    is_thing = torch.zeros(15, dtype=torch.bool)
    is_thing[:10] = True
    m2f = synthetic_query_logits(1, 20, 15, (96, 96), seed=0)
    eomt = synthetic_query_logits(1, 20, 15, (160, 160), seed=1)
    segformer = synthetic_semantic_logits(1, 15, (160, 160), seed=3)
    cases = {
        "panoptic m2f": lambda size: panoptic(
            m2f[0][0], m2f[1][0], (96.0, 96.0), size, RULES["mask2former"], params, is_thing, False, None, True
        ),
        "panoptic eomt": lambda size: panoptic(
            eomt[0][0], eomt[1][0], (120.0, 160.0), size, RULES["eomt"], params, is_thing, False, (0.25, 0.25), True
        ),
        "semantic m2f": lambda size: semantic_from_queries(m2f[0][0], m2f[1][0], (96.0, 96.0), size, gpu=True),
        "semantic segformer": lambda size: semantic_from_logits(
            segformer[0], (120.0, 160.0), size, (0.25, 0.25), gpu=True
        ),
    }
    for name, fn in cases.items():
        small, small_syncs = _count(lambda i, fn=fn: fn((375, 500)), 1)
        large, large_syncs = _count(lambda i, fn=fn: fn((750, 1000)), 1)
        assert small <= 100 and large <= 100, (name, small, large)
        assert abs(large - small) <= 0.1 * small, (name, small, large)
        assert small_syncs == large_syncs == 0, name


def test_gpu_layout_chunks_large_images_to_the_same_maps(monkeypatch):
    """Past GPU_CHUNK elements the queries and classes are taken in chunks (memory bounded): same maps."""
    import labeler.postprocess as pp

    params = PanopticParams(0.5, 0.5, 0.5, 255)
    is_thing = torch.zeros(20, dtype=torch.bool)
    is_thing[:10] = True
    cls, masks = synthetic_query_logits(1, 30, 20, (24, 24), seed=4)
    logits = synthetic_semantic_logits(1, 20, (24, 24), seed=4)[0]

    def maps():
        out = [
            panoptic(cls[0], masks[0], (24.0, 18.0), (90, 70), RULES[f], params, is_thing, False, None, True)
            for f in RULES
        ]
        out.append((semantic_from_queries(cls[0], masks[0], (24.0, 24.0), (90, 70), gpu=True),))
        out.append((semantic_from_logits(logits, (24.0, 18.0), (90, 70), gpu=True),))
        return out

    whole = maps()
    monkeypatch.setattr(pp, "GPU_CHUNK", 90 * 70 * 4)  # four queries or classes per chunk
    for a, b in zip(whole, maps(), strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_sam_syncs_per_batch_do_not_grow_with_the_prompts(tmp_path):
    from labeler.sam import build_instances, load_sam
    from labeler.tiny import save_sam_tiny
    from labeler.transfer import Download, upload

    ckpt = str(save_sam_tiny(tmp_path / "tiny.pth"))
    images = _images(2)
    totals = {}
    for grid in (2, 6):  # 1 and 9 decoder passes of 8 prompts
        cfg = SamConfig(points_per_side=grid, points_per_batch=8, pred_iou_thresh=0.0, stability_score_thresh=0.3)
        gen = build_instances(load_sam("vit_tiny", ckpt, "cpu"), cfg, gpu=True)
        with OpCounter() as counter:
            with counter.phase("download"):
                Download([t for pair in gen.run(images, upload(images, torch.device("cpu"), True)) for t in pair], True)
        counts = counter.counts
        assert counts.sync_total("forward") == 0 and counts.sync_total("preprocess") == 0
        assert sum(counts.mixed.values()) == 0
        totals[grid] = {s: dict(k) for s, k in counts.syncs.items() if k}
    assert totals[2] == totals[6], totals
    # The filters' survivors, torchvision's NMS (finished on the host), the survivors per image; the download.
    assert sum(sum(k.values()) for k in totals[6].values()) == 4, totals[6]


def test_rel_pos_tables_equal_segment_anythings():
    from segment_anything.modeling.image_encoder import get_rel_pos

    from labeler.sam_sdpa import rel_table

    rel = torch.randn(27, 8)  # a 14-token window's table (2 * 14 - 1 rows)
    for q, k in ((14, 14), (16, 16), (8, 12)):  # as stored, and resized
        assert torch.equal(rel_table(q, k, rel), get_rel_pos(q, k, rel))


def test_prompt_embeddings_equal_the_prompt_encoders(tmp_path):
    """The GPU path's point embeddings (no boolean-mask assignments) are segment_anything's, bit for bit."""
    from labeler.sam import load_sam
    from labeler.sam_batched import BatchedSamInstances
    from labeler.tiny import save_sam_tiny

    sam = load_sam("vit_tiny", str(save_sam_tiny(tmp_path / "tiny.pth")), "cpu")
    gen = BatchedSamInstances(sam, SamConfig(), gpu=False)
    coords = torch.rand(7, 2, dtype=torch.float64) * 256
    with torch.inference_mode():
        ref, _ = sam.prompt_encoder(
            points=(coords[:, None, :], torch.ones(7, 1, dtype=torch.int)), boxes=None, masks=None
        )
        assert torch.equal(gen._sparse(coords), ref)


def test_one_copy_download_returns_every_array():
    """The GPU layout's download (one byte buffer for every map and record table) on a CPU."""
    from labeler.transfer import Download, upload

    items = [
        torch.arange(12, dtype=torch.uint8).view(3, 4),
        torch.arange(6, dtype=torch.int64).view(2, 3) - 3,
        torch.rand(2, 9, dtype=torch.float64),
        torch.zeros(0, 9, dtype=torch.float64),
        torch.arange(5, dtype=torch.int16).to(torch.uint16),
        np.ones((2, 2), np.float32),
    ]
    out = Download(items, one_copy=True).result()
    for a, b in zip(items, out, strict=True):
        expected = a if isinstance(a, np.ndarray) else a.numpy()
        assert b.dtype == expected.dtype and np.array_equal(b, expected)
    images = _images(2)
    uploaded = upload(images, torch.device("cpu"), True)
    assert all(np.array_equal(t.numpy(), im) for t, im in zip(uploaded, images, strict=True))
