"""`--precision`: the forward passes run in the precision asked for, post-processing in fp32, and bf16
maps stay close to fp32's (bench/bench_labeler_precision.py measures how close; docs/LABELERS.md)."""

import numpy as np
import pytest
import torch

from labeler.base import LabelerLoadError
from labeler.config import LabelerConfig, Settings
from labeler.precision import resolve_precision
from labeler.registry import build_labeler


def test_auto_is_bf16_on_cuda_and_fp32_elsewhere():
    assert resolve_precision("auto", "cpu").name == "fp32"
    assert resolve_precision("bf16", "cpu").name == "bf16"
    with pytest.raises(LabelerLoadError, match="--precision"):
        resolve_precision("int8", "cpu")
    with resolve_precision("bf16", "cpu").autocast():
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    with resolve_precision("fp32", "cpu").autocast():
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32


def test_bf16_forward_through_a_preset_stays_close_to_fp32():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((300, 400), (400, 300), (256, 256))]
    out, dtypes = {}, {}
    for precision in ("fp32", "bf16"):
        labeler = build_labeler(Settings(LabelerConfig(preset="tiny-random-eomt", device="cpu", precision=precision)))
        seen = []
        labeler.panoptic.seg.model.register_forward_hook(
            lambda m, i, o, seen=seen: seen.append(o.class_queries_logits.dtype)
        )
        out[precision] = labeler.label(images)
        dtypes[precision] = set(seen)
    assert dtypes == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    equal = sum(int((a.semantic == b.semantic).sum()) for a, b in zip(out["fp32"], out["bf16"], strict=True))
    assert equal / sum(a.semantic.size for a in out["fp32"]) >= 0.95  # measured 99.7% on 16 images
