"""Model sizes against MAE's published decoder, the cascade links, losses, hooks and recipe settings."""

import json

import pytest
import torch

from c2f.cli import main as c2f
from c2fmae.checkpoint import load_checkpoint
from c2fmae.engine import Loop, Schedule, make_optimizer, train_steps
from c2fmae.masking import Masking, MaskInputs, random_mask
from c2fmae.model import C2FMAE, ModelConfig, model_config, split_depth
from c2fmae.train import TrainConfig, make_schedule


def mae_vit_base_decoder_params() -> int:
    """facebookresearch/mae models_mae.py, mae_vit_base_patch16_dec512d8b, counted by hand:
    decoder_embed Linear(768, 512), mask_token, 8 x Block(512, 16 heads, mlp 4, qkv_bias),
    decoder_norm, decoder_pred Linear(512, 16*16*3). (Its fixed sin-cos decoder_pos_embed is a
    frozen parameter there and a buffer here: not counted.)"""
    d, hidden = 512, 4 * 512
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * hidden + hidden) + (hidden * d + d)
    return (768 * d + d) + d + 8 * block + 2 * d + (d * 768 + 768)


def _decoder_params(model) -> int:
    return sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(("decoder_embed", "mask_token", "stages"))
    )


def test_vit_base_in_mae_mode_has_maes_decoder():
    with torch.device("meta"):  # shapes only: no 112M-parameter init
        model = C2FMAE(model_config("c2fmae_vit_base", num_classes=150, stages=("pixel",)))
    stage = model.stages["pixel"]
    assert model.decoder_embed.out_features == 512 and len(stage.blocks) == 8
    assert all(b.attn.num_heads == 16 for b in stage.blocks) and stage.head.out_features == 768
    assert all(b.norm1.eps == 1e-6 for b in stage.blocks) and model.norm.eps == 1e-6  # MAE's LayerNorm
    mae = mae_vit_base_decoder_params()
    assert mae == 26_008_320 and abs(_decoder_params(model) - mae) / mae < 0.01


def test_cascade_split_keeps_maes_depth():
    assert split_depth(8, 3) == (2, 2, 4) and split_depth(4, 3) == (1, 1, 2) and split_depth(8, 1) == (8,)
    assert split_depth(3, 3) == (1, 1, 1) and split_depth(8, 2) == (2, 6)
    casc = model_config("c2fmae_vit_base", num_classes=150)
    assert casc.decoder_depths == (2, 2, 4) and casc.decoder_dim == 512 and casc.decoder_heads == 16
    huge = model_config("c2fmae_vit_huge", num_classes=150)
    assert (huge.patch_size, huge.cell_size, huge.embed_dim, huge.depth) == (14, 7, 1280, 32)
    with pytest.raises(ValueError, match="less than the 3 stages"):
        model_config("c2fmae_vit_base", decoder_depth=2)
    with pytest.raises(ValueError, match="must each divide"):
        ModelConfig(patch_size=14, cell_size=4)


def _mae_loss(imgs, pred, mask, p):
    """MAE's loss written independently: unfold patches, per-patch normalisation, mean over removed."""
    n, _, h, _ = imgs.shape
    g = h // p
    target = torch.nn.functional.unfold(imgs, p, stride=p)  # [N, 3*p*p, L], channel-major
    target = target.reshape(n, 3, p, p, g * g).permute(0, 4, 2, 3, 1).reshape(n, g * g, p * p * 3)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    target = (target - mean) / (var + 1e-6) ** 0.5
    return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()


def test_vit_base_in_mae_mode_is_exactly_mae():
    torch.manual_seed(0)
    model = C2FMAE(model_config("c2fmae_vit_base", num_classes=4, stages=("pixel",))).eval()
    imgs = torch.randn(2, 3, 224, 224)
    mask = random_mask(MaskInputs(196, 2), 0.75, torch.Generator().manual_seed(0))
    with torch.no_grad():
        losses, preds = model(imgs, mask, keep=49)
    expected = _mae_loss(imgs, preds["pixel"], mask, 16)
    assert set(losses) == {"pixel", "total"} and torch.allclose(losses["pixel"], expected, atol=1e-6)


@pytest.mark.parametrize("link", ["add", "xattn"])
def test_cascade_links_carry_the_pixel_loss_to_the_semantic_stage(link):
    torch.manual_seed(0)
    model = C2FMAE(model_config("c2fmae_vit_micro", num_classes=4, cascade_link=link))
    assert model.stages["semantic"].link is None and model.stages["pixel"].link is not None
    imgs, sem = torch.randn(2, 3, 224, 224), torch.randint(0, 4, (2, 56, 56))
    inst = torch.rand(2, 5, 56, 56)
    mask = random_mask(MaskInputs(196, 2), 0.75, torch.Generator().manual_seed(0))
    losses, preds = model(imgs, mask, sem, inst)
    assert preds["semantic"].shape == (2, 196, 16 * 4) and preds["pixel"].shape == (2, 196, 768)
    losses["pixel"].backward()
    assert model.stages["semantic"].blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_xattn_attends_to_the_previous_stage_tokens():
    """Cross-attention mixes positions: changing one token of the previous stage changes the next
    stage at other positions (the additive link cannot)."""
    torch.manual_seed(0)
    for link, spreads in (("xattn", True), ("add", False)):
        stage = C2FMAE(model_config("c2fmae_vit_micro", num_classes=4, cascade_link=link)).stages["instance"]
        x, prev = torch.randn(1, 197, 64), torch.randn(1, 197, 64)
        other = prev.clone()
        other[0, 5] = torch.randn(64)
        with torch.no_grad():
            a = x + (stage.link(prev) if link == "add" else stage.link(x, prev))
            b = x + (stage.link(other) if link == "add" else stage.link(x, other))
        changed = (a - b).abs().sum(-1)[0] > 1e-5
        assert bool(changed[6:].any()) == spreads and bool(changed[5])


def test_per_patch_losses_and_no_nan_without_labels():
    torch.manual_seed(0)
    model = C2FMAE(model_config("c2fmae_vit_micro", num_classes=4))
    imgs = torch.randn(2, 3, 224, 224)
    sem = torch.full((2, 56, 56), 255)  # no labelled cell at all
    inst = torch.zeros(2, 5, 56, 56)
    mask = random_mask(MaskInputs(196, 2), 0.75, torch.Generator().manual_seed(0))
    latent, ids = model.forward_encoder(imgs, mask, keep=49)
    preds = model.forward_decoder(latent, ids)
    losses, per_patch = model.forward_loss(preds, model.targets(imgs, sem, inst), mask, per_patch=True)
    assert losses["semantic"] == 0 and torch.isfinite(losses["total"])
    assert set(per_patch) == {"semantic", "instance", "pixel"} and per_patch["pixel"].shape == (2, 196)
    assert torch.allclose((per_patch["pixel"] * mask).sum() / mask.sum(), losses["pixel"])
    zero = torch.zeros(2, 196)  # mask ratio 0: nothing removed, nothing to average, no NaN
    assert all(torch.isfinite(v) for v in model.forward_loss(preds, model.targets(imgs, sem, inst), zero).values())


def test_features_cls_or_mean():
    model = C2FMAE(model_config("c2fmae_vit_micro", num_classes=4)).eval()
    x = torch.randn(2, 3, 224, 224)
    cls, mean = model.features(x, "cls"), model.features(x, "mean")
    assert cls.shape == mean.shape == (2, 64) and not torch.allclose(cls, mean)


def test_after_step_hook_sees_each_step_with_keys_and_crops():
    """The EMA-teacher hook: called after every optimizer step with the stepped model and the batch."""
    torch.manual_seed(0)
    model = C2FMAE(model_config("c2fmae_vit_micro", num_classes=4))
    ema = C2FMAE(model.cfg)
    ema.load_state_dict(model.state_dict())
    seen = []

    def after_step(out):
        with torch.no_grad():
            for e, p in zip(ema.parameters(), out.model.parameters(), strict=True):
                e.lerp_(p, 0.5)
        seen.append((out.step, tuple(out.batch["key"]), out.batch["crop"].shape))

    batch = {
        "image": torch.randn(2, 3, 224, 224),
        "sem_cells": torch.randint(0, 4, (2, 56, 56)),
        "inst_cells": torch.zeros(2, 5, 56, 56),
        "sem_patch": torch.zeros(2, 196, dtype=torch.long),
        "inst_patch": torch.zeros(2, 196, dtype=torch.long),
        "crop": torch.zeros(2, 7, dtype=torch.int32),
        "key": ["a", "b"],
    }
    loop = Loop(Schedule(3, 1, 1e-3), Masking("random"))
    outs = list(train_steps(model, make_optimizer(model, 0.05, 1e-3), iter([batch] * 3), range(3), loop, after_step))
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][1] == ("a", "b") and seen[0][2] == (2, 7)
    assert len(outs) == 3 and not torch.equal(ema.decoder_embed.weight, model.decoder_embed.weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_steps_never_wait_for_the_gpu():
    """No device -> host sync inside the step loop (masks, losses, mix, optimizer): CUDA's sync
    debug mode turns any into an error."""
    from c2fmae.data import patch_mode

    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = C2FMAE(model_config("c2fmae_vit_micro", num_classes=4)).to(dev)
    sem = torch.randint(0, 4, (4, 56, 56), device=dev)
    batch = {
        "image": torch.randn(4, 3, 224, 224, device=dev),
        "sem_cells": sem,
        "inst_cells": torch.rand(4, 5, 56, 56, device=dev),
        "sem_patch": patch_mode(sem, 4),
        "inst_patch": patch_mode(sem, 4),
        "key": list("abcd"),
    }
    loop = Loop(Schedule(4, 1, 1e-3), Masking("curriculum"), accum_steps=2)
    opt = make_optimizer(model, 0.05, 1e-3)
    batches = iter([batch] * 8)
    list(train_steps(model, opt, batches, range(1), loop))  # lazy initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = list(train_steps(model, opt, batches, range(1, 3), loop))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(outs) == 2 and torch.isfinite(outs[-1].losses["total"]).item()


def test_warmup_in_epochs_like_mae():
    cfg = TrainConfig("x", epochs=800, batch_size=256, steps_per_epoch=1251)
    s = make_schedule(cfg, 1_281_167, world=16)
    assert s.warmup_steps == 40 * 1251 and s.total_steps == 800 * 1251 and s.peak_lr == pytest.approx(1.5e-4 * 16)
    short = make_schedule(TrainConfig("x", steps=300, batch_size=16), 1000, world=1)
    assert short.warmup_steps == 60  # capped at a fifth of a short run
    assert make_schedule(TrainConfig("x", steps=300, warmup_steps=7), 1000, 1).warmup_steps == 7


MICRO = ["--model", "c2fmae_vit_micro", "--workers", "0", "--vis-every", "0", "--log-every", "1000"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from shards.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("scenes")
    write_synthetic_dataset(out, 8, 4, seed=0)
    return out


def test_decoder_flags_reach_the_checkpoint(scenes, tmp_path):
    out = tmp_path / "run"
    flags = ["--decoder-dim", "48", "--decoder-heads", "3", "--decoder-depths", "1,2,1", "--cascade-link", "xattn"]
    args = [str(scenes), "--output", str(out), "--steps", "2", "--batch-size", "2", *flags, *MICRO]
    assert c2f(["pretrain", *args, "--decoder-mlp-ratio", "2"]) == 0
    m = load_checkpoint(out / "checkpoint.pt")["model_config"]
    assert (m["decoder_dim"], m["decoder_heads"], m["decoder_depths"], m["cascade_link"]) == (48, 3, (1, 2, 1), "xattn")
    assert m["decoder_mlp_ratio"] == 2.0 and m["norm_eps"] == 1e-6


def test_patch_14_trains(scenes, tmp_path):
    out = tmp_path / "p14"
    args = [str(scenes), "--output", str(out), "--steps", "1", "--batch-size", "2", "--patch-size", "14", *MICRO]
    assert c2f(["pretrain", *args]) == 0
    m = load_checkpoint(out / "checkpoint.pt")["model_config"]
    assert (m["patch_size"], m["cell_size"]) == (14, 7)


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--decoder-depths", "1,1"], "one depth >= 1 per stage"),
        (["--decoder-dim", "50", "--decoder-heads", "3"], "multiples of their head counts"),
        (["--stages", "pixel,edges"], "use distinct ones of"),
        (["--patch-size", "15"], "must each divide"),
    ],
)
def test_bad_model_flags_are_one_line_usage_errors(scenes, tmp_path, capsys, flags, phrase):
    capsys.readouterr()
    assert c2f(["pretrain", str(scenes), "--output", str(tmp_path / "x"), *flags, *MICRO]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err, err


def test_keep_checkpoints(scenes, tmp_path):
    out = tmp_path / "keep"
    args = [str(scenes), "--output", str(out), "--steps", "6", "--batch-size", "2", "--ckpt-every", "2"]
    assert c2f(["pretrain", *args, "--keep-checkpoints", "2", *MICRO]) == 0
    assert sorted(p.name for p in out.glob("checkpoint*.pt")) == [
        "checkpoint-0000004.pt",
        "checkpoint-0000006.pt",
        "checkpoint.pt",
    ]
    assert (out / "checkpoint.pt").samefile(out / "checkpoint-0000006.pt")  # a link, not a second copy
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(6))


def test_compile_wraps_ddp_and_steps_as_eager(tmp_path, monkeypatch):
    """`--compile` under torchrun: torch.compile around the DDP-wrapped model (so dynamo splits the
    graph at DDP's gradient buckets and each bucket's all-reduce overlaps the backward), SMIR's
    estimating passes compiled too; the engine finds the plain model inside, and a step gives
    what the eager step gives. (Dynamo's `eager` backend: the wiring, without a C++ build.)"""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from c2fmae.data import patch_mode
    from c2fmae.engine import unwrap
    from c2fmae.methods import MethodSettings
    from c2fmae.train import Dist, wrap_for_training

    compiled = []
    real = torch.compile

    def spy(fn, **kw):
        compiled.append(fn)
        return real(fn, backend="eager")

    monkeypatch.setattr(torch, "compile", spy)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        sem = torch.randint(0, 4, (4, 16, 16))
        batch = {
            "image": torch.randn(4, 3, 64, 64),
            "sem_cells": sem,
            "inst_cells": torch.rand(4, 5, 16, 16),
            "sem_patch": patch_mode(sem, 4),
            "inst_patch": patch_mode(sem, 4),
        }
        losses = {}
        for compile in (False, True):
            torch.manual_seed(1)
            model = C2FMAE(model_config("c2fmae_vit_micro", img_size=64, num_classes=4))
            wrapped = wrap_for_training(model, Dist(0, 2, 0, torch.device("cpu")), compile)
            assert unwrap(wrapped) is model and hasattr(wrapped, "no_sync")
            if compile:
                assert isinstance(wrapped._orig_mod, DistributedDataParallel) and wrapped._orig_mod.module is model
            loop = Loop(Schedule(2, 1, 1e-3), Masking("selective", 0.5), method=MethodSettings("smir"), compile=compile)
            opt = make_optimizer(model, 0.05, 1e-3)
            outs = list(train_steps(wrapped, opt, iter([batch] * 2), range(2), loop))
            losses[compile] = torch.stack([o.losses["total"] for o in outs])
        assert torch.allclose(losses[True], losses[False], rtol=1e-4)
        names = [getattr(f, "__name__", type(f).__name__) for f in compiled]
        assert names == ["DistributedDataParallel", "patch_losses"], names
    finally:
        dist.destroy_process_group()
        torch._dynamo.reset()  # no eager-backend code left cached for a later compile
