"""The batched SAM generator against segment_anything's own pieces and its SamAutomaticMaskGenerator,
on the tiny SAM (labeler.tiny: smooth, confident masks like a trained SAM's) loaded from a checkpoint.

Images have a long side of 256 (the tiny SAM's input) unless a test is about resizing, so both
generators see the same pixels: ours resizes on the device with torchvision's antialiased uint8 path,
the stock one with PIL, which differ by one grey level on a few pixels.
"""

import numpy as np
import pytest
import torch
from skimage import data as skdata

from labeler.base import LabelerLoadError
from labeler.config import SamConfig
from labeler.overlap import records_to_instances
from labeler.sam import build_instances, load_sam
from labeler.sam_batched import BatchedSamInstances
from labeler.sam_sdpa import use_sdpa
from labeler.tiny import build_sam_tiny, save_sam_tiny


@pytest.fixture(scope="module")
def sam(tmp_path_factory):
    return load_sam("vit_tiny", str(save_sam_tiny(tmp_path_factory.mktemp("sam") / "tiny.pth")), device="cpu")


def _images():
    import torch.nn.functional as F

    def long_side_256(im):
        h, w = im.shape[:2]
        s = 256 / max(h, w)
        t = torch.from_numpy(im).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, (round(h * s), round(w * s)), mode="bilinear", antialias=True)
        return np.ascontiguousarray(t[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy())

    coffee = skdata.coffee()
    return [long_side_256(coffee), long_side_256(coffee.transpose(1, 0, 2)), long_side_256(skdata.astronaut())]


def _run(generator, images):
    out = generator.run(images, [torch.from_numpy(im) for im in images])
    return [(inst.numpy(), records_to_instances(rec.numpy(), agnostic=True)) for inst, rec in out]


def test_decoder_for_many_images_equals_segment_anythings(sam):
    """`decode` takes each prompt's image embedding; MaskDecoder.forward repeats one image's."""
    gen = BatchedSamInstances(sam, SamConfig())
    torch.manual_seed(0)
    features = sam.image_encoder(torch.randn(2, 3, 256, 256))
    points = torch.rand(5, 1, 2) * 256
    sparse, dense = sam.prompt_encoder(points=(points, torch.ones(5, 1)), boxes=None, masks=None)
    image_of = torch.tensor([0, 1, 1, 0, 1])
    with torch.inference_mode():
        masks, iou = gen.decode(features[image_of], sparse, dense)
        for k, i in enumerate(image_of.tolist()):
            ref_masks, ref_iou = sam.mask_decoder(
                image_embeddings=features[i : i + 1],
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse[k : k + 1],
                dense_prompt_embeddings=dense[k : k + 1],
                multimask_output=True,
            )
            torch.testing.assert_close(masks[k : k + 1], ref_masks, rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(iou[k : k + 1], ref_iou, rtol=1e-4, atol=1e-5)


def test_sdpa_encoder_equals_segment_anythings():
    ref, ours = build_sam_tiny(seed=1), build_sam_tiny(seed=1)
    assert use_sdpa(ours.image_encoder) == 1
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        torch.testing.assert_close(ours.image_encoder(x), ref.image_encoder(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "thresholds",
    [(0.0, 0.0, 1.0), (0.0, 0.4, 0.7)],  # keep everything; filter about half, then NMS
    ids=["keep-all", "filter+nms"],
)
def test_full_resolution_filtering_equals_stock_generator(sam, thresholds):
    iou, stability, nms = thresholds
    kw = {"points_per_side": 5, "pred_iou_thresh": iou, "stability_score_thresh": stability, "box_nms_thresh": nms}
    images = _images()
    stock = _run(build_instances(sam, SamConfig(sam_generator="stock", min_instance_area=16, **kw)), images)
    ours = _run(build_instances(sam, SamConfig(sam_filter_resolution="full", min_instance_area=16, **kw)), images)
    for (ref_map, ref_recs), (our_map, our_recs) in zip(stock, ours, strict=True):
        assert np.array_equal(our_map, ref_map)
        assert [(r.id, r.area, r.bbox, round(r.score, 5)) for r in our_recs] == [
            (r.id, r.area, r.bbox, round(r.score, 5)) for r in ref_recs
        ]
    assert sum(len(r) for _, r in stock) >= len(images)


def test_low_resolution_filtering_drift_is_small(sam):
    """Filtering on the 64x64 low-res logits (256x256 for real SAMs) instead of masks upsampled to the
    image moves a few masks across a threshold; the painted maps stay close. docs/LABELERS.md records
    the figures (bench/bench_labeler.py --sam-drift)."""
    kw = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.4, "box_nms_thresh": 0.7}
    images = _images()
    full = _run(build_instances(sam, SamConfig(sam_filter_resolution="full", min_instance_area=16, **kw)), images)
    low = _run(build_instances(sam, SamConfig(sam_filter_resolution="low", min_instance_area=16, **kw)), images)
    covered = [float(((a > 0) == (b > 0)).mean()) for (a, _), (b, _) in zip(full, low, strict=True)]
    assert min(covered) >= 0.9


def test_device_resize_is_within_one_grey_level_of_pil(sam):
    from segment_anything.utils.transforms import ResizeLongestSide

    gen = BatchedSamInstances(sam, SamConfig())
    image = skdata.coffee()  # 400 x 600 -> 171 x 256
    x, resized = gen._prepare([torch.from_numpy(image)])
    ref = ResizeLongestSide(256).apply_image(image)
    assert resized == [ref.shape[:2]]
    ours = (x[0, :, : ref.shape[0], : ref.shape[1]] * sam.pixel_std + sam.pixel_mean).round().permute(1, 2, 0)
    diff = (ours.numpy() - ref.astype(np.float32)).__abs__()
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_unsupported_stock_options_fail_with_advice(sam):
    for cfg in (SamConfig(crop_n_layers=1), SamConfig(min_mask_region_area=100), SamConfig(sam_filter_resolution="x")):
        with pytest.raises(LabelerLoadError, match="stock|low or full"):
            build_instances(sam, cfg)
    with pytest.raises(LabelerLoadError, match="choose batched or stock"):
        build_instances(sam, SamConfig(sam_generator="fast"))
