"""The C2FMAE trainer: masking, targets, the MAE reduction, schedule, overfit, resume, DDP, probe."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import free_port

from c2f.cli import main as c2f
from c2fmae.checkpoint import load_checkpoint
from c2fmae.data import cell_labels, centre_targets, instance_targets, patch_mode
from c2fmae.engine import lr_at
from c2fmae.masking import (
    Curriculum,
    MaskInputs,
    curriculum_mask,
    instance_mask,
    num_removed,
    random_mask,
    semantic_mask,
)
from c2fmae.model import C2FMAE, model_config

# --- masking ------------------------------------------------------------------------------------


def _regions(n=6, side=14, seed=0):
    """Patch-level labels with real structure: horizontal bands (semantic) and boxes (instances)."""
    g = torch.Generator().manual_seed(seed)
    sem = torch.zeros(n, side, side, dtype=torch.long)
    inst = torch.zeros(n, side, side, dtype=torch.long)
    for i in range(n):
        cuts = sorted(torch.randint(2, side - 2, (2,), generator=g).tolist())
        sem[i, cuts[0] :] = 1
        sem[i, cuts[1] :] = 2
        sem[i, :2, :3] = 255  # some ignore
        for j in range(1, 5):
            y, x = torch.randint(0, side - 4, (2,), generator=g).tolist()
            h, w = torch.randint(1, 5, (2,), generator=g).tolist()
            inst[i, y : y + h, x : x + w] = j
            sem[i, y : y + h, x : x + w] = 3 + j % 3
    return MaskInputs(side * side, n, sem.flatten(1), inst.flatten(1), 255)


@pytest.mark.parametrize("ratio", [0.0, 0.4, 0.75, 0.9])
@pytest.mark.parametrize("strategy", [random_mask, semantic_mask, instance_mask])
def test_exact_ratio(strategy, ratio):
    batch = _regions()
    mask = strategy(batch, ratio, torch.Generator().manual_seed(1))
    assert mask.shape == (6, 196) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.sum(1) == num_removed(ratio, 196)).all()


@pytest.mark.parametrize(
    "strategy, labels, skip", [(semantic_mask, "sem_patch", 255), (instance_mask, "inst_patch", 0)]
)
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75])
def test_guided_masks_remove_whole_regions(strategy, labels, skip, seed, ratio):
    """Every region is removed whole or not at all, except at most one that did not fit, which loses
    a compact part (a disc around one of its patches); random top-up patches only when no region is left."""
    batch = _regions(seed=seed)
    mask = strategy(batch, ratio, torch.Generator().manual_seed(seed))
    for m, r in zip(mask, getattr(batch, labels), strict=True):
        partial = []
        for rid in r.unique().tolist():
            removed, size = int(m[r == rid].sum()), int((r == rid).sum())
            if rid != skip and 0 < removed < size:
                partial.append(rid)
        assert len(partial) <= 1
        whole = sum(int((r == rid).sum()) for rid in r.unique().tolist() if rid != skip and bool(m[r == rid].all()))
        assert whole > 0 or partial
        outside = int(m[r == skip].sum())
        if partial:
            assert outside == 0  # the part fills the budget: no random patches
            _assert_compact(m, r == partial[0])


def _assert_compact(m, region):
    """The removed part of `region` is the set of its patches nearest to some patch of it."""
    side = int(region.numel() ** 0.5)
    yx = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2).float()
    removed, kept = region & (m == 1), region & (m == 0)
    for c in region.nonzero().squeeze(1):
        d = ((yx - yx[c]) ** 2).sum(-1)
        if d[removed].max() <= d[kept].min():
            return
    raise AssertionError("the removed part of the region is not compact")


def test_an_object_larger_than_the_budget_loses_a_compact_part():
    """A close-up: one instance covers 90% of the patches; the whole budget comes out of it."""
    inst = torch.zeros(3, 14, 14, dtype=torch.long)
    inst[:, :, :13] = 1  # 182 of 196 patches
    batch = MaskInputs(196, 3, torch.zeros(3, 196, dtype=torch.long), inst.flatten(1), 255)
    mask = instance_mask(batch, 0.75, torch.Generator().manual_seed(0))
    assert (mask.sum(1) == 147).all() and (mask[:, inst.flatten(1)[0] == 0] == 0).all()
    for m in mask:
        _assert_compact(m, inst.flatten(1)[0] == 1)
    assert not torch.equal(mask[0], mask[1])  # a random part, not always the same


def test_random_mask_is_uniform():
    m = random_mask(MaskInputs(196, 4000), 0.75, torch.Generator().manual_seed(0))
    freq = m.mean(0)
    assert abs(float(freq.mean()) - 0.75) < 1e-6 and float((freq - 0.75).abs().max()) < 0.05


def test_guided_masking_needs_labels():
    with pytest.raises(ValueError, match="semantic labels"):
        semantic_mask(MaskInputs(196, 2), 0.5, torch.Generator())


def test_curriculum_schedule():
    c = Curriculum()
    start, mid, end = c.probs(0.0), c.probs(0.5), c.probs(1.0)
    for p in (start, mid, end):
        assert abs(sum(p) - 1) < 1e-9
    assert start[0] == max(start) and mid[1] == max(mid) and end[2] == max(end)
    steps = [c.probs(t / 1000) for t in range(1001)]
    assert max(abs(a[i] - b[i]) for a, b in zip(steps, steps[1:], strict=False) for i in range(3)) < 0.01  # smooth
    mask, picks = curriculum_mask(_regions(), 0.75, torch.Generator().manual_seed(0), 0.0, c)
    assert (mask.sum(1) == 147).all() and picks.shape == (6,) and set(picks.tolist()) <= {0, 1, 2}


# --- targets ------------------------------------------------------------------------------------


def test_patch_mode_and_instance_targets_are_numbering_free():
    cells = torch.tensor([[1, 1, 2, 2], [1, 3, 2, 2], [0, 0, 5, 5], [0, 0, 5, 4]])
    assert patch_mode(cells[None], 2).tolist() == [[1, 2, 0, 5]]
    assert patch_mode(torch.tensor([[[7, 3], [3, 7]]]), 2).tolist() == [[3]]  # ties: the smallest id
    inst = np.zeros((16, 16), np.uint16)
    inst[0:8, 0:8] = 7
    inst[8:16, 6:14] = 300
    whole = np.arange(16)

    def targets(ids):
        _, centres, edge = cell_labels(ids, ids, whole, whole, 4)
        return instance_targets(torch.from_numpy(centres.astype(np.int64))[None], torch.from_numpy(edge)[None])[0]

    t = targets(inst)
    relabeled = targets(np.where(inst == 7, 2, np.where(inst == 300, 1, 0)).astype(np.uint16))
    assert torch.equal(t, relabeled)  # only "same or different" matters
    assert t.shape == (4, 4, 4) and t[0].sum() == 8  # foreground: cell centres inside a box
    assert t[1, 2, 1] == 1 and t[1, 2, 3] == 1 and t[1, 2, 2] == 0 and t[1, 0, 0] == 0  # boundary: mixed cells
    assert t[2, 0, 0] == 1 and t[2, 0, 1] == 0 and t[3, 0, 0] == 1 and t[3, 1, 0] == 0  # affinities


def _renumbered(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """The same instances under other ids (a random injective map, background stays 0)."""
    g = torch.Generator().manual_seed(seed)
    new = torch.randperm(65535, generator=g)[: int(ids.max()) + 1] + 1
    new[0] = 0
    return new[ids]


def test_centre_targets_do_not_depend_on_instance_numbering():
    """Bit for bit: every instance is indexed by its first cell, not by its id."""
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(3, 56, 56, dtype=torch.long)
    for n in range(3):
        for k in range(1, 9):
            y, x = torch.randint(0, 48, (2,), generator=g).tolist()
            h, w = torch.randint(3, 20, (2,), generator=g).tolist()
            ids[n, y : y + h, x : x + w] = 17 * k + n  # overlapping boxes: later ones cut earlier ones
    edge = torch.rand(3, 56, 56, generator=g) > 0.9
    t = centre_targets(ids, edge, 4)
    assert t.shape == (3, 5, 56, 56)
    for seed in range(3):
        assert torch.equal(centre_targets(_renumbered(ids, seed), edge, 4), t)
    fg = ids > 0
    assert torch.equal(t[:, 0].bool(), fg) and torch.equal(t[:, 1].bool(), edge)
    assert (t[:, 3:][~fg.unsqueeze(1).expand(-1, 2, -1, -1)] == 0).all()  # offsets only on objects
    assert 0 <= float(t[:, 2].min()) and float(t[:, 2].max()) <= 1.0


def test_centre_target_points_each_cell_at_its_objects_centre():
    ids = torch.zeros(1, 16, 16, dtype=torch.long)
    ids[0, 2:6, 3:9] = 5  # rows 2..5, cols 3..8: centre (3.5, 5.5) in cells
    t = centre_targets(ids, torch.zeros(1, 16, 16, dtype=torch.bool), 4)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    inside = ids[0] == 5
    assert torch.allclose(ys[inside] + 4 * t[0, 3][inside], torch.full((24,), 3.5))  # offsets are in patches
    assert torch.allclose(xs[inside] + 4 * t[0, 4][inside], torch.full((24,), 5.5))
    heat = t[0, 2]
    peak = heat.argmax()
    assert divmod(int(peak), 16) in {(3, 5), (3, 6), (4, 5), (4, 6)}  # at the sub-cell centre
    # A centre on a cell corner: the bilinear splat, blurred, peaks at 0.89 (1 on a cell centre).
    assert float(heat.max()) > 0.88 and float(heat[12:, 12:].max()) < 1e-3  # a bump there, nothing far off


def test_centre_target_separates_touching_objects_of_one_class_the_local_target_cannot():
    """Two cars side by side, one class, touching along a cell line (no cell holds both, so no
    boundary cell either): for every patch away from their border the local target is the same
    as for one merged object; the centre target points each object's cells at its own centre,
    so grouping cells by cell + offset recovers the two objects."""
    two = torch.zeros(1, 32, 32, dtype=torch.long)
    two[0, 8:24, 0:16] = 1
    two[0, 8:24, 16:32] = 2
    merged = (two > 0).long()
    no_edge = torch.zeros(1, 32, 32, dtype=torch.bool)
    cells = 4  # cells per patch: 8 x 8 patches

    def per_patch(t):  # [1, K, 32, 32] -> [64 patches, K * 16]
        k = t.shape[1]
        return t[0].reshape(k, 8, cells, 8, cells).permute(1, 3, 0, 2, 4).reshape(64, -1)

    away = torch.tensor([c not in (3, 4) for r in range(8) for c in range(8)])  # not the border columns
    local_two, local_merged = per_patch(instance_targets(two, no_edge)), per_patch(instance_targets(merged, no_edge))
    assert torch.equal(local_two[away], local_merged[away])  # locally, two cars are one
    assert not torch.equal(local_two, local_merged)  # only the border patches differ

    centre_two, centre_merged = centre_targets(two, no_edge, cells), centre_targets(merged, no_edge, cells)
    assert not torch.equal(per_patch(centre_two)[away], per_patch(centre_merged)[away])
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def groups(t):  # cells grouped by the centre they point at
        fg = t[0, 0] > 0
        cy, cx = ys + cells * t[0, 3], xs + cells * t[0, 4]
        return {(round(float(a), 3), round(float(b), 3)) for a, b in zip(cy[fg], cx[fg], strict=True)}

    assert groups(centre_two) == {(15.5, 7.5), (15.5, 23.5)} and groups(centre_merged) == {(15.5, 15.5)}
    heat = centre_two[0, 2]
    assert float(heat[15:17, 7:9].min()) > 0.88 and float(heat[15:17, 23:25].min()) > 0.88  # two peaks
    assert float(heat[15:17, 15:17].max()) < 0.1  # none between them


# --- model --------------------------------------------------------------------------------------


def test_pixel_only_random_masking_is_exactly_mae():
    """Independent MAE loss: patchify with unfold, per-patch normalisation, mean over removed patches."""
    torch.manual_seed(0)
    model = C2FMAE(model_config("c2fmae_vit_micro", num_classes=4, stages=("pixel",))).eval()
    imgs = torch.randn(3, 3, 224, 224)
    mask = random_mask(MaskInputs(196, 3), 0.75, torch.Generator().manual_seed(0))
    losses, preds = model(imgs, mask)
    target = torch.nn.functional.unfold(imgs, 16, stride=16)  # [N, 3*16*16, L], channel-major
    target = target.reshape(3, 3, 16, 16, 196).permute(0, 4, 2, 3, 1).reshape(3, 196, 768)  # (row, col, chan)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((preds["pixel"] - target) ** 2).mean(-1)
    expected = (per_patch * mask).sum() / mask.sum()
    assert set(losses) == {"pixel", "total"}
    assert torch.allclose(losses["pixel"], expected, atol=1e-6) and torch.allclose(losses["total"], expected)


def test_cascade_conditions_later_stages_and_parallel_does_not():
    torch.manual_seed(0)
    casc = C2FMAE(model_config("c2fmae_vit_micro", num_classes=4))
    par = C2FMAE(model_config("c2fmae_vit_micro", num_classes=4, cascade=False))
    assert casc.stages["semantic"].link is None and casc.stages["pixel"].link is not None
    assert all(s.link is None for s in par.stages.values())
    imgs, sem = torch.randn(2, 3, 224, 224), torch.randint(0, 4, (2, 56, 56))
    inst = torch.rand(2, 5, 56, 56)
    mask = random_mask(MaskInputs(196, 2), 0.75, torch.Generator().manual_seed(0))
    losses, _ = casc(imgs, mask, sem, inst)
    losses["pixel"].backward()  # the pixel loss reaches the semantic stage only through the cascade
    assert casc.stages["semantic"].blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_lr_schedule_is_a_pure_function():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


# --- training -----------------------------------------------------------------------------------


MICRO = ["--model", "c2fmae_vit_micro", "--workers", "0", "--vis-every", "0", "--log-every", "1000"]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_overfit_a_handful_of_shards(scenes, tmp_path, capsys):
    small, _ = scenes
    out = tmp_path / "overfit"
    args = [
        str(small),
        "--output",
        str(out),
        "--steps",
        "240",
        "--batch-size",
        "8",
        "--blr",
        "0.06",
        "--warmup-steps",
        "10",
        "--no-augment",
        "--masking",
        "random",
        *MICRO,
    ]
    assert c2f(["pretrain", *args]) == 0
    m = _metrics(out)
    assert len(m) == 240
    for term in ("pixel", "semantic", "instance"):
        first = sum(r[f"loss_{term}"] for r in m[:10]) / 10
        last = sum(r[f"loss_{term}"] for r in m[-10:]) / 10
        assert first / last > 2.0, (term, first, last)


def test_resume_continues_exactly(scenes, tmp_path):
    _, big = scenes
    common = [
        str(big),
        "--steps",
        "8",
        "--steps-per-epoch",
        "3",
        "--batch-size",
        "4",
        "--masking",
        "curriculum",
        "--warmup-steps",
        "2",
        *MICRO,
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert c2f(["pretrain", *common, "--output", str(straight)]) == 0
    assert c2f(["pretrain", *common, "--output", str(split), "--stop-after", "4"]) == 0  # stops mid-epoch 2
    assert load_checkpoint(split / "checkpoint.pt")["step"] == 4
    assert c2f(["pretrain", str(big), "--output", str(split), "--resume", "--workers", "0"]) == 0
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(split / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5), k
    ma, mb = _metrics(straight), _metrics(split)
    assert [r["step"] for r in mb] == list(range(8))
    for ra, rb in zip(ma, mb, strict=True):
        assert ra["loss_total"] == pytest.approx(rb["loss_total"], rel=1e-4) and ra["masking"] == rb["masking"]


def test_decoding_on_the_device_trains_as_decoding_in_the_workers(scenes, tmp_path):
    """`--decode gpu` on a CPU machine: JPEG bytes through a worker process, decoded and cropped in
    the main process with the workers' crop code: the same pixels, so the same run, and it
    resumes exactly."""
    _, big = scenes
    common = [str(big), "--steps", "4", "--steps-per-epoch", "3", "--batch-size", "4", "--warmup-steps", "2"]
    common += ["--model", "c2fmae_vit_micro", "--img-size", "64", "--vis-every", "0", "--log-every", "1000"]
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert c2f(["pretrain", *common, "--workers", "1", "--output", str(cpu)]) == 0
    assert (
        c2f(["pretrain", *common, "--workers", "1", "--decode", "gpu", "--output", str(gpu), "--stop-after", "2"]) == 0
    )
    assert c2f(["pretrain", str(big), "--output", str(gpu), "--resume"]) == 0
    a, b = load_checkpoint(cpu / "checkpoint.pt"), load_checkpoint(gpu / "checkpoint.pt")
    assert b["config"]["decode"] == "gpu" and b["step"] == 4
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    assert [r["loss_total"] for r in _metrics(cpu)] == pytest.approx([r["loss_total"] for r in _metrics(gpu)], rel=1e-5)


def test_resume_without_checkpoint_is_a_usage_error(scenes, tmp_path, capsys):
    assert c2f(["pretrain", str(scenes[0]), "--output", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_ddp_two_processes_gloo(scenes, tmp_path):
    _, big = scenes
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            "-m",
            "c2f",
            "pretrain",
            str(big),
            "--output",
            str(out),
            "--steps",
            "3",
            "--batch-size",
            "4",
            *MICRO,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es), global batch 8" in r.stdout
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 3 and state["run"]["world"] == 2 and len(_metrics(out)) == 3


def test_probe_and_visualisation(scenes, tmp_path, capsys):
    _, big = scenes
    out = tmp_path / "p"
    assert (
        c2f(
            [
                "pretrain",
                str(big),
                "--output",
                str(out),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--model",
                "c2fmae_vit_micro",
                "--workers",
                "0",
                "--vis-every",
                "1",
            ]
        )
        == 0
    )
    assert (out / "recon_0000000.png").exists() and (out / "recon_0000001.png").exists()
    capsys.readouterr()
    assert c2f(["probe", str(big), "--checkpoint", str(out / "checkpoint.pt"), "--json", "--batch-size", "16"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["samples"]["train"] + res["samples"]["val"] == 48 and 0.0 <= res["knn_top1"] <= 1.0
