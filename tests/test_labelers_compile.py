"""`--compile` compiles once per canvas bucket, not once per image size.

Canvases are padded to a ladder of a few sizes (labeler/preprocess.py: `bucket`) and the batch dimension
is dynamic, so a run of mixed image sizes and group sizes compiles each bucket at most twice (one image,
several images). Counted with dynamo's own statistics; the test compiles with dynamo's `eager` backend
because whether a call recompiles is decided by dynamo's guards, whatever backend then compiles the graph
(inductor on this CPU takes minutes per graph; docs/LABELERS.md records an inductor run).
"""

import math

import numpy as np
import torch

from labeler.hf import SemanticSegmenter, load_segmenter
from labeler.preprocess import HFPreprocessor, bucket
from labeler.tiny import build_segformer_tiny, save_hf


def test_bucket_ladder_is_short_and_covers_every_side():
    rungs = sorted({bucket(side, 32) for side in range(1, 2561)})
    assert len([r for r in rungs if 640 <= r <= 2560]) <= 10  # a few shapes per octave
    for side in range(1, 2561):
        b = bucket(side, 32)
        assert b >= side and b % 32 == 0 and b <= math.ceil(side * 2**0.25 / 32) * 32  # a quarter octave


def _images(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def test_compiles_once_per_canvas_bucket(tmp_path):
    import torch._dynamo
    from torch._dynamo.utils import counters

    path = save_hf(*build_segformer_tiny(aspect=True), tmp_path / "segformer")  # short side 64, long <= 128
    torch._dynamo.reset()
    counters.clear()
    seg = load_segmenter(str(path), device="cpu", compile=True, backend="eager")
    labeler = SemanticSegmenter(seg, pad_multiple=8, buckets=True)
    # Landscape (aspect 1.3-1.45: resized 64 x 83..92, bucket 64 x 96) and portrait; every size distinct.
    first = [(300, 400), (400, 300), (310, 420), (420, 310)]
    later = [(200, 260), (330, 430), (430, 330), (280, 380), (380, 280), (260, 200), (201, 290), (290, 201)]
    canvases = {labeler.runner.prep._canvas(*_resized(seg, s)) for s in first + later}
    assert canvases == {(64, 96), (96, 64)}
    plain = HFPreprocessor(seg.processor, "segformer", 8)  # without buckets: more canvases, more compiles
    assert len({plain._canvas(*_resized(seg, s)) for s in first + later}) > len(canvases)

    labeler(_images(first, 0))  # both buckets, two images each
    labeler(_images(first[:1], 1))  # one image
    labeler(_images(first[1:2], 2))
    compiled = counters["stats"]["unique_graphs"]
    assert compiled >= 4  # per bucket: one image, several (and the model's graph breaks)
    for i in range(0, len(later), 3):  # new sizes, new group sizes (1 to 3 per bucket): nothing to compile
        labeler(_images(later[i : i + 3], 3 + i))
    assert counters["stats"]["unique_graphs"] == compiled


def _resized(seg, size):
    """The processor's resized (h, w) for an image of `size`."""
    x = torch.zeros(1, 3, *size, dtype=torch.uint8)
    ip = seg.processor
    return tuple(ip.resize(image=x, size=ip.size, resample=ip.resample).shape[-2:])
