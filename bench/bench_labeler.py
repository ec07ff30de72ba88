"""Labeler throughput per backend on this CPU with the tiny random models, and where the time goes.

Time is split three ways: the model forward passes (forward hooks on the model modules), library
pre/post-processing (the Hugging Face image processor and its post_process_*, and SAM's automatic
mask generator outside SAM's modules), and everything we own: map building, overlap resolution,
label checks and PNG encoding of both maps. Target: our share < 20%.

    .venv/bin/python bench/bench_labeler.py [--images 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage import data as skdata

from labeler.registry import build_labeler
from shards.image import prepare_image
from shards.pack import pack_sample
from shards.synthetic import encode_jpeg


class ForwardTimer:
    """Sums wall time spent inside the given modules' forward()."""

    def __init__(self, modules):
        self.total = 0.0
        self._t0 = 0.0
        for m in modules:
            m.register_forward_pre_hook(self._pre)
            m.register_forward_hook(self._post)

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.total += time.perf_counter() - self._t0


def _time_method(obj, name: str, acc: list[float]) -> None:
    """Accumulate the wall time of obj.name(...) into acc[0]; works for __call__ via a proxy class."""
    if name == "__call__":
        original = type(obj).__call__

        class Timed(type(obj)):
            def __call__(self, *a, **kw):
                t0 = time.perf_counter()
                try:
                    return original(self, *a, **kw)
                finally:
                    acc[0] += time.perf_counter() - t0

        obj.__class__ = Timed
        return
    fn = getattr(obj, name, None)
    if fn is None:
        return

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            acc[0] += time.perf_counter() - t0

    setattr(obj, name, timed)


def photos(n: int) -> list[np.ndarray]:
    base = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    return [base[i % len(base)] for i in range(n)]


def bench(preset: str, images: list[np.ndarray]) -> dict[str, float]:
    lab = build_labeler(preset)
    amg_time = [0.0]
    if hasattr(lab, "panoptic"):
        model_fwd, sam_fwd = ForwardTimer([lab.panoptic.seg.model]), ForwardTimer([])
    else:
        sam = lab.instances.generator.predictor.model
        model_fwd = ForwardTimer([lab.semantic.seg.model])
        sam_fwd = ForwardTimer([sam.image_encoder, sam.prompt_encoder, sam.mask_decoder])
        generate = lab.instances.generator.generate

        def timed_generate(img):  # an instance attribute: only this generator is timed
            t0 = time.perf_counter()
            try:
                return generate(img)
            finally:
                amg_time[0] += time.perf_counter() - t0

        lab.instances.generator.generate = timed_generate
    seg = lab.panoptic.seg if hasattr(lab, "panoptic") else lab.semantic.seg
    proc_time = [0.0]
    for name in ("__call__", "post_process_semantic_segmentation", "post_process_panoptic_segmentation"):
        _time_method(seg.processor, name, proc_time)
    prepared = [prepare_image(encode_jpeg(im, 90)) for im in images]
    lab.label([p.rgb for p in prepared[:1]])  # warm-up
    model_fwd.total = sam_fwd.total = amg_time[0] = proc_time[0] = 0.0
    t0 = time.perf_counter()
    for i in range(0, len(prepared), 4):
        batch = prepared[i : i + 4]
        for p, labels in zip(batch, lab.label([p.rgb for p in batch]), strict=True):
            pack_sample("k", p, labels, "bench")
    total = time.perf_counter() - t0
    forward = model_fwd.total + sam_fwd.total
    # library: SamAutomaticMaskGenerator.generate outside SAM's modules, and the HF image processor's
    # pre-processing and post_process_* (minus the model forward, which runs outside them)
    library = amg_time[0] - sam_fwd.total + proc_time[0]
    ours = total - forward - library
    return {"img/s": len(images) / total, "forward": forward / total, "library": library / total, "ours": ours / total}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    imgs = photos(args.images)
    print(f"{'preset':<22} {'img/s':>7} {'forward':>8} {'libraries':>10} {'ours':>6}")
    for preset in ("tiny-random", "tiny-random-panoptic"):
        r = bench(preset, imgs)
        print(f"{preset:<22} {r['img/s']:7.2f} {r['forward']:8.1%} {r['library']:10.1%} {r['ours']:6.1%}")


if __name__ == "__main__":
    main()
