"""A device fault ends the labeling process, not the data: it is told from an image's own error,
a labeler raises it instead of quarantining every image, and a job that meets one mid-way (a real
labeler with an injected sticky fault) restarts its actor and loses nothing."""

import json
import tarfile

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from c2f.cli import main as c2f_main
from labeler.base import is_device_fault
from labeler.fixed_cost import FAULT_MESSAGE, FixedCostLabeler
from labeler.registry import build_labeler
from pipelines.plan import make_plan


def tiny_tree(root, n: int, size=(24, 32)) -> None:
    """n small photos (crops of the bundled samples) in ImageNet layout: decoding costs nothing."""
    src = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((REPO / "samples/train").glob("*/*.JPEG"))]
    h, w = size
    for i in range(n):
        syn = f"n0{1000000 + i % 3:07d}"
        (root / syn).mkdir(parents=True, exist_ok=True)
        im = src[i % len(src)]
        y, x = (i * 7) % (im.shape[0] - h), (i * 13) % (im.shape[1] - w)
        Image.fromarray(im[y : y + h, x : x + w]).save(root / syn / f"{syn}_{i:04d}.JPEG", quality=90)


def exactly_once(inp, out) -> tuple[dict[str, int], list[dict]]:
    """(samples per key over all shards, quarantine rows), asserting every planned input is in one of them once."""
    plan = make_plan(inp, 1)
    seen: dict[str, int] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for name in tf.getnames():
                key, ext = name.split(".", 1)
                if ext == "jpg":
                    seen[key] = seen.get(key, 0) + 1
    qfile = out / "quarantine.jsonl"
    quarantined = [json.loads(line) for line in qfile.read_text().splitlines()] if qfile.exists() else []
    assert all(n == 1 for n in seen.values()), {k: n for k, n in seen.items() if n != 1}
    assert set(seen).isdisjoint(q["key"] for q in quarantined)
    assert set(seen) | {q["key"] for q in quarantined} == {it.key for it in plan.items}
    return seen, quarantined


@pytest.mark.parametrize(
    "error",
    [
        torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA`"),
        RuntimeError("CUDA error: uncorrectable ECC error encountered"),
        RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, ...)`"),
        RuntimeError("HIP error: an illegal memory access was encountered"),
    ],
)
def test_sticky_device_errors_are_faults(error):
    assert is_device_fault(error)
    try:  # raised from inside another exception's handling, or chained: still a fault
        try:
            raise error
        except Exception as inner:
            raise ValueError("post-processing failed") from inner
    except ValueError as outer:
        assert is_device_fault(outer)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
        ValueError("image of 0 x 0 pixels"),
        RuntimeError("The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 1"),
    ],
)
def test_image_errors_and_out_of_memory_are_not_faults(error):
    assert not is_device_fault(error)


def test_a_batch_labeler_raises_a_device_fault_instead_of_quarantining_every_image():
    """A real tiny panoptic model; its forward pass fails as a GPU's does after an illegal access."""
    labeler = build_labeler("tiny-random-panoptic")
    images = [np.full((40, 56, 3), 60 * i, np.uint8) for i in range(3)]
    model = labeler.panoptic.seg.model

    def fail(error):
        def hook(module, args):
            raise error

        return model.register_forward_pre_hook(hook)

    handle = fail(ValueError("a bad image"))  # an ordinary error: retried image by image, each reported
    try:
        out = labeler.label(images)
    finally:
        handle.remove()
    assert [type(r) for r in out] == [ValueError] * 3
    handle = fail(torch.AcceleratorError("CUDA error: an illegal memory access was encountered"))
    try:
        with pytest.raises(torch.AcceleratorError):
            labeler.label(images)
    finally:
        handle.remove()
    assert all(not isinstance(r, Exception) for r in labeler.label(images))


def test_fixed_cost_fault_is_sticky_and_claimed_once(tmp_path):
    marker = tmp_path / "fault"
    marker.write_text("1")  # the fault comes at the second batch
    images = [np.zeros((8, 8, 3), np.uint8)] * 2
    lab = FixedCostLabeler(0.001, fault_file=str(marker))
    assert len(lab.label(images)) == 2 and marker.exists()
    first = lab.submit(images)  # batch 2: the device fails while running it
    assert not marker.exists()
    with pytest.raises(torch.AcceleratorError, match="illegal memory access"):
        lab.collect(first)
    with pytest.raises(torch.AcceleratorError):  # sticky: nothing runs in this process any more
        lab.submit(images)
    fresh = FixedCostLabeler(0.001, fault_file=str(marker))  # a new process: the marker is gone
    assert len(fresh.label(images)) == 2


@pytest.mark.slow
def test_a_device_fault_mid_job_restarts_the_actor_and_costs_no_label(tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    tiny_tree(inp, 24)
    marker = tmp_path / "fault"
    marker.write_text("3")  # the actor's fourth batch faults; its restarted process finds no marker
    args = [str(inp), str(out), "--preset", "fixed-cost", "--fixed-cost-seconds", "0.02", "--batch-size", "2"]
    code = c2f_main(["label", *args, "--samples-per-shard", "4", "--fixed-cost-fault", str(marker)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert not marker.exists()
    assert "failed: device fault: AcceleratorError: " in text and FAULT_MESSAGE in text
    assert "labeling actor 0 is back after" in text and "1 labeling-actor failure(s) survived" in text
    assert "24 images in 6 shards, 0 quarantined" in text and "OK:" in text
    seen, quarantined = exactly_once(inp, out)
    assert len(seen) == 24 and quarantined == []
