"""The trainer's other methods (SMIR, FOLK, SRMAE): each reduces to what it must when its own
ingredient is switched off, overfits a few scenes, resumes exactly and runs under 2-process DDP."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import free_port

from c2f.cli import main as c2f
from c2fmae.checkpoint import load_checkpoint
from c2fmae.masking import Masking, MaskInputs, random_mask, selective_mask
from c2fmae.methods import (
    MethodSettings,
    frequency_filter,
    frequency_view,
    loss_in_crop,
    step_inputs,
    teacher_momentum,
)
from c2fmae.model import C2FMAE, model_config, patchify
from c2fmae.rounds import segments

# --- reductions ------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_selective_with_equal_losses_is_random_masking():
    n, length = 64, 196
    batch = MaskInputs(length, n, patch_loss=torch.full((n, length), 0.7))
    for ratio in (0.5, 0.75):
        assert torch.equal(selective_mask(batch, ratio, _gen(3)), random_mask(batch, ratio, _gen(3)))


def test_selective_removes_the_highest_loss_patches():
    n, length = 8, 196
    loss = torch.rand(n, length, generator=_gen(0))
    mask = selective_mask(MaskInputs(length, n, patch_loss=loss), 0.5, _gen(1))
    assert (mask.sum(1) == 98).all()
    removed_min = torch.where(mask > 0, loss, torch.inf).min(1).values
    kept_max = torch.where(mask == 0, loss, -torch.inf).max(1).values
    assert (removed_min > kept_max).all()


def test_a_fourth_curriculum_phase_draws_selective_masks_late():
    from c2fmae.masking import NAMES, Curriculum

    m = Masking("curriculum", 0.5, Curriculum((0.0, 0.33, 0.67, 1.0), 0.15))
    n, length = 256, 196
    sem = torch.zeros(n, length, dtype=torch.long)
    loss = torch.rand(n, length, generator=_gen(2))
    assert not m.needs_loss(0.0) and m.needs_loss(1.0)
    early, early_picks = m(sem, sem, 0.0, _gen(0))  # below 0.1%: the rare selective draws are random ones
    assert (early_picks != NAMES.index("selective")).all() and (early.sum(1) == 98).all()
    mask, picks = m(sem, sem, 1.0, _gen(0), loss)
    sel = picks == NAMES.index("selective")
    assert sel.float().mean() > 0.5 and (mask.sum(1) == 98).all()
    removed_min = torch.where(mask[sel] > 0, loss[sel], torch.inf).min(1).values
    kept_max = torch.where(mask[sel] == 0, loss[sel], -torch.inf).max(1).values
    assert (removed_min > kept_max).all()  # the selective picks removed their highest-loss patches


def test_identity_frequency_filter_and_no_distillation_is_a_full_image_autoencoder():
    torch.manual_seed(0)
    imgs = torch.randn(2, 3, 64, 64)
    assert torch.equal(frequency_filter(imgs, (0.0,), _gen(0)), imgs)
    model = C2FMAE(model_config("c2fmae_vit_micro", img_size=64, num_classes=4, stages=("pixel",))).eval()
    sem = torch.zeros(2, 16, dtype=torch.long)
    batch = {"image": imgs, "sem_patch": sem, "inst_patch": sem, "sem_cells": None, "inst_cells": None}
    method = MethodSettings("folk", folk_thresholds=(0.0,), folk_filters=("com",), folk_views=1)
    inputs = step_inputs(method, Masking(), model, batch, 0.0, _gen(0))
    assert inputs.mask.sum() == 0 and inputs.keep == 16 and torch.equal(inputs.view, imgs)
    with torch.no_grad():
        losses, preds = model(imgs, inputs.mask, **inputs.model_kwargs())
        # An autoencoder of the whole image, written out: every patch in, every patch's error counted.
        latent = model.forward_encoder(imgs, torch.zeros(2, 16), keep=16)[0]
        x = model.decoder_embed(latent) + model.decoder_pos_embed
        pred = model.stages["pixel"](x, None)[1]
        target = patchify(imgs, 16)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        expected = ((pred - target) ** 2).mean()
    assert torch.allclose(preds["pixel"], pred, atol=1e-6)
    assert losses["pixel"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(losses) == {"pixel", "total"}


def test_frequency_filter_removes_the_weakest_energy_and_keeps_the_mean():
    torch.manual_seed(1)
    imgs = torch.randn(4, 3, 32, 48).cumsum(-1).cumsum(-2) * 0.05  # a smooth, natural-like spectrum
    for t in (0.005, 0.05, 0.3):
        out = frequency_filter(imgs, (t,), _gen(0))
        assert torch.allclose(out.mean((-1, -2)), imgs.mean((-1, -2)), atol=1e-4)  # DC kept
        centred = imgs - imgs.mean((-1, -2), keepdim=True)
        removed = ((imgs - out) ** 2).sum((1, 2, 3)) / (centred**2).sum((1, 2, 3))  # Parseval
        assert (removed <= t + 1e-4).all() and (removed > 0).all(), (t, removed)
    small, big = (frequency_filter(imgs, (t,), _gen(0)) for t in (0.01, 0.2))
    assert ((imgs - small) ** 2).sum() < ((imgs - big) ** 2).sum()


def test_one_view_and_com_alone_is_the_one_view_folk():
    """The reduction of FOLK as published to its one-view form: with `--folk-filters com
    --folk-views 1` the view is the weakest-first filter drawing one threshold per image and
    nothing else from the step's generator, and the distillation regresses every token of the
    teacher's own crop, as before views and filters existed."""
    torch.manual_seed(0)
    imgs = torch.randn(4, 3, 64, 64).cumsum(-1) * 0.1
    model = C2FMAE(model_config("c2fmae_vit_micro", img_size=64, num_classes=4, stages=("pixel",), distill=True))
    model.eval()
    sem = torch.zeros(4, 16, dtype=torch.long)
    batch = {"image": imgs, "sem_patch": sem, "inst_patch": sem, "sem_cells": None, "inst_cells": None}
    method = MethodSettings("folk", folk_filters=("com",), folk_views=1)
    g = _gen(5)
    inputs = step_inputs(method, Masking(), model, batch, 0.0, g)
    after = torch.rand(3, generator=g)
    ref = _gen(5)
    t = torch.tensor(method.folk_thresholds)[torch.randint(3, (4,), generator=ref)]  # the one draw
    assert torch.equal(torch.rand(3, generator=ref), after)
    for i in range(4):
        alone = frequency_filter(imgs[i : i + 1], (float(t[i]),), _gen(0))
        assert torch.allclose(inputs.view[i : i + 1], alone, atol=1e-5)
    assert inputs.views == 1 and inputs.removed.any()
    with torch.no_grad():
        losses, _ = model(imgs, inputs.mask, **inputs.model_kwargs())
        latent = model.forward_encoder(inputs.view, inputs.mask, keep=16)[0]
        target = model.teacher(imgs, model.pos_embed)  # the teacher's tokens of the same crop, all 17
        expected = ((model.projector(latent) - target) ** 2).mean()
    assert losses["distill"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_rcom_keeps_exactly_what_com_removes():
    """The reverse filter: com's view plus rcom's view is the image plus its mean (the DC term,
    which both keep), for the same threshold."""
    torch.manual_seed(2)
    imgs = torch.randn(3, 3, 32, 48).cumsum(-1).cumsum(-2) * 0.05
    for t in (0.01, 0.2):
        com, com_removed = frequency_view(imgs, (t,), _gen(0), ("com",))
        rcom, rcom_removed = frequency_view(imgs, (t,), _gen(0), ("rcom",))
        assert torch.allclose(com + rcom, imgs + imgs.mean((-1, -2), keepdim=True), atol=1e-4)
        assert not (com_removed & rcom_removed).any() and (com_removed | rcom_removed).sum() == 3 * 32 * 25 - 3
        # rcom's view holds at most the fraction t of the energy outside the mean
        centred = imgs - imgs.mean((-1, -2), keepdim=True)
        kept = ((rcom - imgs.mean((-1, -2), keepdim=True)) ** 2).sum((1, 2, 3)) / (centred**2).sum((1, 2, 3))
        assert (kept <= t + 1e-4).all()


def test_both_filters_are_drawn_per_image():
    torch.manual_seed(3)
    imgs = torch.randn(64, 3, 16, 16).cumsum(-1) * 0.1
    view = frequency_filter(imgs, (0.05,), _gen(1), ("com", "rcom"))
    centred = imgs - imgs.mean((-1, -2), keepdim=True)
    removed = ((imgs - view) ** 2).sum((1, 2, 3)) / (centred**2).sum((1, 2, 3))
    com, rcom = removed <= 0.05 + 1e-4, removed >= 0.95 - 1e-4
    assert (com | rcom).all() and 16 < int(com.sum()) < 48


def test_two_views_distill_each_view_to_the_teacher_of_the_other():
    """The batch holds the first views of N images, then their second views: each view's CLS,
    through the projector, regresses the teacher's CLS of the other view's original."""
    torch.manual_seed(0)
    model = C2FMAE(model_config("c2fmae_vit_micro", img_size=64, num_classes=4, stages=("pixel",), distill=True))
    imgs = torch.randn(6, 3, 64, 64)  # 3 images x 2 views
    latent = torch.randn(6, 17, 64)
    with torch.no_grad():
        loss = model.distill_loss(latent, imgs, views=2)
        target = model.teacher(imgs, model.pos_embed)[:, 0]
        other = torch.cat([target[3:], target[:3]])
        expected = ((model.projector(latent[:, 0]) - other) ** 2).mean()
        same_view = ((model.projector(latent[:, 0]) - target) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() != pytest.approx(same_view.item())


def test_frequency_loss_counts_the_removed_components_only():
    """0 for a reconstruction that is the image, and for one that misses only components the view
    kept; for one that restores none of the removed ones, the energy fraction the view lost."""
    torch.manual_seed(4)
    model = C2FMAE(model_config("c2fmae_vit_micro", img_size=64, num_classes=4, stages=("pixel",), freq_weight=1.0))
    imgs = torch.randn(2, 3, 64, 64).cumsum(-1).cumsum(-2) * 0.05
    view, removed = frequency_view(imgs, (0.05,), _gen(0), ("com",))
    t = patchify(imgs, 16)
    normed = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert model.frequency_loss(normed, imgs, removed).item() < 1e-6
    v = patchify(view, 16)  # the view itself as the prediction: every removed component missing
    as_view = (v - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
    centred = imgs - imgs.mean((-1, -2), keepdim=True)
    lost = (((imgs - view) ** 2).sum((1, 2, 3)) / (centred**2).sum((1, 2, 3))).mean()  # Parseval
    assert model.frequency_loss(as_view, imgs, removed).item() == pytest.approx(lost.item(), rel=1e-3)
    assert 0 < lost.item() <= 0.05 + 1e-4
    assert model.frequency_loss(as_view, imgs, ~removed).item() < 1e-4  # what the view kept, it has


def test_srmae_with_every_patch_at_full_resolution_is_mae_without_masking():
    torch.manual_seed(0)
    sr = C2FMAE(model_config("c2fmae_vit_micro", img_size=64, num_classes=4, stages=("pixel",), lowres_factor=4))
    mae = C2FMAE(model_config("c2fmae_vit_micro", img_size=64, num_classes=4, stages=("pixel",)))
    missing, unexpected = mae.load_state_dict(sr.state_dict(), strict=False)
    assert not missing and all(k.startswith("lowres_embed") for k in unexpected)
    imgs = torch.randn(2, 3, 64, 64)
    sem = torch.zeros(2, 16, dtype=torch.long)
    batch = {"image": imgs, "sem_patch": sem, "inst_patch": sem, "sem_cells": None, "inst_cells": None}
    inputs = step_inputs(MethodSettings("srmae"), Masking("random", 0.0), sr, batch, 0.0, _gen(0))
    assert inputs.lowres.sum() == 0 and inputs.mask.sum() == 0
    zeros = torch.zeros(2, 16)
    with torch.no_grad():
        _, a = sr(imgs, inputs.mask, **inputs.model_kwargs())
        _, b = mae(imgs, zeros, keep=16)
    assert torch.allclose(a["pixel"], b["pixel"], atol=1e-6)
    # A degraded patch reaches the encoder through its own embedding, the others do not change.
    low = torch.zeros(2, 16)
    low[:, 5] = 1
    tokens, full = sr.embed_patches(imgs, low), sr.embed_patches(imgs)
    assert not torch.allclose(tokens[:, 5], full[:, 5]) and torch.equal(tokens[:, 6:], full[:, 6:])


def test_teacher_is_an_ema_of_the_student_and_is_checkpointed():
    model = C2FMAE(model_config("c2fmae_vit_micro", img_size=64, num_classes=4, stages=("pixel",), distill=True))
    assert torch.equal(model.teacher.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert not any(p.requires_grad for p in model.teacher.parameters())
    before = model.teacher.cls_token.clone()
    with torch.no_grad():
        model.cls_token.add_(1.0)
    model.teacher.update(model, 0.9)
    assert torch.allclose(model.teacher.cls_token, before + 0.1, atol=1e-6)
    assert any(k.startswith("teacher.") for k in model.state_dict())
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996) and teacher_momentum(99, 100, 0.996) == 1.0


def test_loss_maps_follow_the_crop():
    g = 4
    cache = torch.arange(16.0).reshape(1, 4, 4)
    whole = torch.tensor([[0, 0, 100, 200, 0, 100, 200]], dtype=torch.int32)
    assert torch.equal(loss_in_crop(cache, whole, g), cache.reshape(1, 16))
    flipped = whole.clone()
    flipped[0, 4] = 1
    assert torch.equal(loss_in_crop(cache, flipped, g), cache.flip(-1).reshape(1, 16))
    top_left = torch.tensor([[0, 0, 50, 100, 0, 100, 200]], dtype=torch.int32)  # the top-left quarter
    assert torch.equal(loss_in_crop(cache, top_left, 2), torch.tensor([[0.0, 1.0, 4.0, 5.0]]))


def test_rounds_split_the_steps():
    assert segments(0, 10, 10, 0) == [(0, 10, None)]
    assert segments(0, 10, 10, 3) == [(0, 4, 0), (4, 7, 1), (7, 10, 2)]
    assert segments(5, 9, 10, 3) == [(5, 7, 1), (7, 9, 2)]


# --- training ----------------------------------------------------------------------------------------


MICRO = ["--model", "c2fmae_vit_micro", "--img-size", "64", "--workers", "0", "--vis-every", "0", "--log-every", "1000"]
METHODS = {
    "smir": ["--method", "smir"],
    "smir-rounds": ["--method", "smir", "--selective-rounds", "2"],
    "folk": ["--method", "folk"],
    "srmae": ["--method", "srmae"],
}


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["smir", "folk", "srmae"])
def test_each_method_overfits_a_few_scenes(method, scenes, tmp_path):
    small, _ = scenes
    out = tmp_path / method
    # 300 steps: selective masking keeps removing the patches the model knows least, so its loss
    # falls slower than under random masks (240 steps gave 1.8x on the instance term).
    args = [str(small), "--output", str(out), "--steps", "300", "--batch-size", "8", "--blr", "0.1"]
    args += ["--warmup-steps", "10", "--no-augment", "--stages", "semantic,instance,pixel", *METHODS[method], *MICRO]
    assert c2f(["pretrain", *args]) == 0
    m = _metrics(out)
    terms = [k[5:] for k in m[0] if k.startswith("loss_") and k != "loss_total"]
    assert {"pixel", "semantic", "instance"} <= set(terms) and ("distill" in terms) == (method == "folk")
    for term in terms:
        first = sum(r[f"loss_{term}"] for r in m[:10]) / 10
        last = sum(r[f"loss_{term}"] for r in m[-10:]) / 10
        assert first / last > 2.0, (method, term, first, last)


@pytest.mark.parametrize("method", ["smir", "smir-rounds", "folk", "srmae"])
def test_each_method_resumes_exactly(method, scenes, tmp_path, capsys):
    _, big = scenes
    common = [str(big), "--steps", "8", "--steps-per-epoch", "3", "--batch-size", "4", "--warmup-steps", "2"]
    common += [*METHODS[method], *MICRO]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert c2f(["pretrain", *common, "--output", str(straight)]) == 0
    assert c2f(["pretrain", *common, "--output", str(split), "--stop-after", "4"]) == 0
    if method == "smir-rounds":  # round 1 starts at step 4: its scores are made by the resumed run
        assert not (split / "smir_round001.pt").exists()
    assert c2f(["pretrain", str(big), "--output", str(split), "--resume", "--workers", "0"]) == 0
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(split / "checkpoint.pt")
    assert a["step"] == b["step"] == 8 and a["config"]["method"] == METHODS[method][1]
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5), k
    if method == "folk":
        assert any(k.startswith("teacher.") for k in a["model"])
    if method == "smir-rounds":  # round 0 masks at random, round 1 by the scores of round 0's model
        ma = _metrics(straight)
        assert set(ma[0]["masking"]) == {"random"} and set(ma[-1]["masking"]) == {"selective"}
    for ra, rb in zip(_metrics(straight), _metrics(split), strict=True):
        assert ra["loss_total"] == pytest.approx(rb["loss_total"], rel=1e-4) and ra["masking"] == rb["masking"]
    assert c2f(["probe", str(big), "--checkpoint", str(split / "checkpoint.pt"), "--batch-size", "8"]) == 0
    assert "kNN(k=" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["smir-rounds", "folk", "srmae"])
def test_each_method_runs_under_two_process_ddp(method, scenes, tmp_path):
    _, big = scenes
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    cmd += ["--master-port", str(free_port()), "-m", "c2f", "pretrain", str(big), "--output", str(out)]
    cmd += ["--steps", "4", "--batch-size", "4", *METHODS[method], *MICRO]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es), global batch 8" in r.stdout
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 4 and state["run"]["world"] == 2 and len(_metrics(out)) == 4
    if method == "smir-rounds":  # both ranks' shares were scored and merged
        scores = torch.load(out / "smir_round001.pt", weights_only=True)
        from c2fmae.data import partition_of

        assert sorted(scores["keys"]) == sorted({k for k in _all_keys(big) if partition_of(k, 2) == 1})


def test_smir_rounds_are_scored_by_loader_workers(scenes, tmp_path):
    """Round scoring reads the partition with DataLoader workers (each its own shards): every key of
    the partition is scored once, and a run resumed inside the round reads the saved scores."""
    _, big = scenes
    out = tmp_path / "w"
    args = [str(big), "--output", str(out), "--steps", "4", "--batch-size", "4", *METHODS["smir-rounds"], *MICRO]
    args[args.index("--workers") + 1] = "2"
    assert c2f(["pretrain", *args, "--stop-after", "3"]) == 0
    scores = torch.load(out / "smir_round001.pt", weights_only=True)
    from c2fmae.data import partition_of

    want = sorted(k for k in _all_keys(big) if partition_of(k, 2) == 1)
    assert sorted(scores["keys"]) == want and scores["loss"].shape == (len(want), 4, 4)
    assert c2f(["pretrain", str(big), "--output", str(out), "--resume"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4 and set(_metrics(out)[-1]["masking"]) == {"selective"}


def _all_keys(ds):
    import tarfile

    keys = set()
    for shard in ds.glob("*.tar"):
        with tarfile.open(shard) as tf:
            keys |= {m.name.split(".", 1)[0] for m in tf}
    return keys


def test_method_flag_errors_are_one_line(scenes, tmp_path, capsys):
    small, _ = scenes
    base = ["pretrain", str(small), "--output", str(tmp_path / "x"), *MICRO, "--steps", "1"]
    for extra, msg in [
        (["--method", "folk", "--mask-ratio", "0.5"], "removes frequencies"),
        (["--method", "srmae", "--stages", "semantic"], "must include pixel"),
        (["--method", "srmae", "--lowres-factor", "1"], "--lowres-factor must be 2"),
        (["--selective-rounds", "3"], "--masking selective"),
        (["--method", "folk", "--folk-thresholds", "0.1,x"], "--folk-thresholds"),
        (["--method", "folk", "--folk-filters", "com,jpeg"], "--folk-filters: one or both of com,rcom"),
        (["--method", "folk", "--folk-views", "3"], "--folk-views must be 1 or 2"),
        (["--curriculum-centers", "0,1"], "--curriculum-centers"),
    ]:
        assert c2f([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (extra, err)


def test_damaged_smir_scores_are_a_one_line_error(scenes, tmp_path, capsys):
    _, big = scenes
    out = tmp_path / "r"
    args = [str(big), "--output", str(out), "--steps", "4", "--batch-size", "4", *METHODS["smir-rounds"], *MICRO]
    assert c2f(["pretrain", *args, "--stop-after", "3"]) == 0  # inside round 1: its scores are saved
    (out / "smir_round001.pt").write_bytes(b"not a torch file")
    assert c2f(["pretrain", str(big), "--output", str(out), "--resume", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "smir_round001.pt: unreadable SMIR scores" in err and "delete it" in err and "Traceback" not in err
